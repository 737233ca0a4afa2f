"""The exception tree. Every user-facing failure is a `DsprepError` with an exit code the CLI returns."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "ConfigError",
    "DsprepError",
    "EngineError",
    "FormatDetectionError",
    "FormatSpecError",
    "InputError",
    "OutputError",
    "RecipeError",
    "RejectedRowsError",
    "RowError",
    "RowFailure",
    "TemplateError",
    "TemplateTimeoutError",
    "TokenizerError",
    "VerifyError",
    "WorkerDiedError",
]


class DsprepError(Exception):
    """Base of every error dsprep reports to a user (exit code 1 unless a subclass says otherwise)."""

    exit_code = 1


class ConfigError(DsprepError):
    """A trainer integration's settings conflict with the shards or with each other (a usage error)."""

    exit_code = 2


class InputError(DsprepError):
    """An input cannot be read at all: missing, unknown extension, not the container its name says."""

    exit_code = 3


class FormatSpecError(DsprepError):
    """A format spec file is invalid (bad TOML, unknown key, wrong type)."""

    exit_code = 3


class FormatDetectionError(DsprepError):
    """`--format auto` found no spec, or several equally good ones, for an input."""

    exit_code = 3


class TemplateError(DsprepError):
    """A chat template cannot be loaded or rendered, or fails its conformance checks."""

    exit_code = 7


class TemplateTimeoutError(TemplateError):
    """A render ran past its time limit: a probe render that does is fatal at once, not retried another way."""


class TokenizerError(DsprepError):
    """A tokenizer cannot be loaded (missing folder, unknown built-in name, unreadable files)."""

    exit_code = 3


class VerifyError(DsprepError):
    """An output folder does not match its manifest, or breaks an invariant of its stage."""

    exit_code = 8


class RowFailure(DsprepError):
    """`--on-error fail` stopped at the first row that could not be normalized (or encoded): its message, and where
    known the index of its input and its reject line."""

    exit_code = 4

    def __init__(self, message: str, *, input_index: int | None = None, reject: str | None = None) -> None:
        super().__init__(message)
        self.input_index = input_index
        self.reject = reject


class RejectedRowsError(DsprepError):
    """More rows were rejected than `--max-rejected` allows."""

    exit_code = 5


class OutputError(DsprepError):
    """The output folder cannot be written (not empty without `--overwrite`, not writable)."""

    exit_code = 6


class RecipeError(DsprepError):
    """A recipe file is invalid: not YAML, an unknown key, a wrong type (the message names file and line)."""

    exit_code = 10


class EngineError(DsprepError):
    """`--engine ray` cannot run: the cluster at `--ray-address` cannot be reached or joined."""

    exit_code = 9


class WorkerDiedError(DsprepError):
    """A worker process died (killed by a signal, or out of memory); the run's completed pieces are kept."""

    exit_code = 12


@dataclass(frozen=True)
class RowError(Exception):
    """One row that cannot be normalized: where it failed, why (a reason code) and what was expected.

    Raised inside the normalizer and caught per row; it becomes a line of the rejects file, never a crash.
    """

    field: str
    reason: str
    message: str

    def __str__(self) -> str:
        return f"{self.field}: {self.message}" if self.field else self.message

    def __reduce__(self) -> tuple[type[RowError], tuple[str, str, str]]:  # picklable, for worker processes
        return RowError, (self.field, self.reason, self.message)
