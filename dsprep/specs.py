"""Format specs: declarative TOML files that say how an input's fields map onto the canonical schema.

A spec only declares a mapping; one generic interpreter (`dsprep.normalize`) applies it. Shipped specs live in
``formats/`` (installed as ``dsprep.formats``); a user passes their own with ``--format my_spec.toml``. Unknown
keys and wrong types are errors naming the file and the key. Anything a mapping cannot express is a named transform
in `dsprep.transforms`, referenced by ``transform = "name"``.
"""

from __future__ import annotations

import functools
import hashlib
import tomllib
from importlib import resources
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, StrictBool, StrictStr, ValidationError, field_validator, model_validator

from dsprep.errors import FormatSpecError

__all__ = ["FormatSpec", "RoleTarget", "Turn", "load_spec", "shipped_spec_names"]

Keys = tuple[str, ...]
FIELD_NAMES = ("messages", "system", "tools", "text", "prompt", "completion", "chosen", "rejected", "label")
MESSAGE_KEYS = ("role", "content", "name", "tool_calls", "tool_call_id", "reasoning", "train", "weight")
# Fields a row must have (any one of the alternatives) for a spec of that kind to match it.
REQUIRED_FIELDS: dict[str, tuple[tuple[str, ...], ...]] = {
    "conversation": (("messages",),),
    "text": (("text",),),
    "prompt_completion": (("prompt",), ("completion",)),
    "preference": (("chosen",), ("rejected",)),
    "kto": (("prompt", "messages"), ("label",)),
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _as_keys(value: str | list[str] | tuple[str, ...]) -> Keys:
    if not isinstance(value, (str, list, tuple)):
        raise ValueError("expected a key name or a list of key names")
    keys = (value,) if isinstance(value, str) else tuple(value)
    if not keys or not all(isinstance(k, str) and k for k in keys):
        raise ValueError("expected a key name or a non-empty list of key names")
    return keys


def _named_keys(name: str, value: str | list[str] | tuple[str, ...]) -> Keys:
    """`_as_keys` whose error names the key it is for."""
    try:
        return _as_keys(value)
    except ValueError as exc:
        raise ValueError(f"{name}: {exc}") from None


class RoleTarget(_Strict):
    """What an input role becomes: a canonical role, and how its content is read."""

    role: Literal["system", "user", "assistant", "tool"]
    content: Literal["text", "tool_call"] = "text"

    @model_validator(mode="after")
    def _check(self) -> RoleTarget:
        if self.content == "tool_call" and self.role != "assistant":
            raise ValueError(f"content 'tool_call' makes an assistant's tool call; role {self.role!r} makes none")
        return self


class Turn(_Strict):
    """One message built from columns (Alpaca-style rows): non-empty sources joined by `join`."""

    role: Literal["system", "user", "assistant"]
    sources: Keys
    join: StrictStr = "\n"
    optional: StrictBool = False

    _keys = field_validator("sources", mode="before")(_as_keys)


class FormatSpec(_Strict):
    """A parsed format spec. `fields` and `message` map canonical names to candidate input keys (first present wins)."""

    name: StrictStr
    description: StrictStr
    kind: Literal["conversation", "text", "prompt_completion", "preference", "kto"]
    fields: dict[str, Keys] = {}
    message: dict[str, Keys] = {}
    roles: dict[str, RoleTarget] = {}
    turns: tuple[Turn, ...] = ()
    split_marker: StrictStr | None = None
    transform: StrictStr | None = None
    auto_detect: StrictBool = True
    origin: str = "<builtin>"
    sha256: str = ""

    @field_validator("fields", "message", mode="before")
    @classmethod
    def _keys_map(cls, value: object) -> object:
        if isinstance(value, dict):
            return {k: _named_keys(k, v) for k, v in value.items()}
        return value

    @field_validator("roles", mode="before")
    @classmethod
    def _roles(cls, value: object) -> object:
        if isinstance(value, dict):
            return {k: {"role": v} if isinstance(v, str) else v for k, v in value.items()}
        return value

    @model_validator(mode="after")
    def _check(self) -> FormatSpec:
        for key in self.fields:
            if key not in FIELD_NAMES:
                raise ValueError(f"unknown key 'fields.{key}'; expected one of {', '.join(FIELD_NAMES)}")
        for key in self.message:
            if key not in MESSAGE_KEYS:
                raise ValueError(f"unknown key 'message.{key}'; expected one of {', '.join(MESSAGE_KEYS)}")
        for alternatives in REQUIRED_FIELDS[self.kind]:
            if not any(a in self.fields or (a == "messages" and self.turns) for a in alternatives):
                raise ValueError(f"kind {self.kind!r} needs fields.{' or fields.'.join(alternatives)}")
        if self.turns and "messages" in self.fields:
            raise ValueError("give either fields.messages or [[turns]], not both")
        if self.turns and self.kind != "conversation":
            raise ValueError(f"[[turns]] build a conversation's messages; kind {self.kind!r} does not read them")
        return self

    def key_for(self, name: str) -> Keys:
        """Candidate input keys for a message attribute, with the OpenAI names as defaults."""
        return self.message.get(name, (name,))

    @functools.cached_property
    def message_aliases(self) -> dict[str, tuple[tuple[str, int], ...]]:
        """Input key -> the message attributes it may hold, each with its rank among that attribute's candidates."""
        aliases: dict[str, list[tuple[str, int]]] = {}
        for name in MESSAGE_KEYS:
            for rank, key in enumerate(self.key_for(name)):
                aliases.setdefault(key, []).append((name, rank))
        return {key: tuple(names) for key, names in aliases.items()}

    @property
    def mapped_keys(self) -> frozenset[str]:
        """Every top-level input key this spec reads."""
        keys = {k for alternatives in self.fields.values() for k in alternatives}
        keys.update(k for turn in self.turns for k in turn.sources)
        return frozenset(keys)

    def required(self) -> tuple[Keys, ...]:
        """Top-level keys a row must have for this spec to match (each entry: any one of the keys)."""
        out: list[Keys] = []
        for alternatives in REQUIRED_FIELDS[self.kind]:
            keys: list[str] = []
            for alt in alternatives:
                if alt == "messages" and self.turns:
                    keys.extend(k for t in self.turns if not t.optional for k in t.sources[:1])
                keys.extend(self.fields.get(alt, ()))
            out.append(tuple(keys))
        return tuple(out)


def _format_loc(loc: tuple[object, ...]) -> str:
    return ".".join(str(p) for p in loc if p not in ("function-after[_check(), FormatSpec]",)) or "<top>"


def parse_spec(text: str, *, name: str, origin: str) -> FormatSpec:
    """Parse TOML text into a FormatSpec; any problem is a FormatSpecError naming `origin` and the key."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise FormatSpecError(f"{origin}: not valid TOML: {exc}") from None
    data.setdefault("name", name)
    for own in ("origin", "sha256"):  # set by dsprep from where the spec was read
        if own in data:
            raise FormatSpecError(f"{origin}: unknown key {own!r}")
    try:
        spec = FormatSpec(**data, origin=origin, sha256=hashlib.sha256(text.encode()).hexdigest())
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = _format_loc(tuple(err["loc"]))
        if err["type"] == "extra_forbidden":
            raise FormatSpecError(f"{origin}: unknown key {loc!r}") from None
        msg = err["msg"].removeprefix("Value error, ")
        raise FormatSpecError(f"{origin}: {loc}: {msg}") from None
    from dsprep.transforms import TRANSFORMS

    if spec.transform is not None and spec.transform not in TRANSFORMS:
        known = ", ".join(sorted(TRANSFORMS))
        raise FormatSpecError(f"{origin}: unknown transform {spec.transform!r}; known: {known}")
    return spec


@functools.cache
def shipped_spec_names() -> tuple[str, ...]:
    """Names of the specs shipped in `dsprep.formats`, sorted."""
    files = resources.files("dsprep.formats").iterdir()
    return tuple(sorted(f.name.removesuffix(".toml") for f in files if f.name.endswith(".toml")))


@functools.cache
def _load_shipped(name: str) -> FormatSpec:
    text = resources.files("dsprep.formats").joinpath(f"{name}.toml").read_text(encoding="utf-8")
    return parse_spec(text, name=name, origin=f"formats/{name}.toml")


def load_spec(name_or_path: str) -> FormatSpec:
    """Load a shipped spec by name, or a user's spec from a `.toml` path."""
    if name_or_path in shipped_spec_names():
        return _load_shipped(name_or_path)
    path = Path(name_or_path)
    if path.suffix == ".toml" or path.exists():
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise FormatSpecError(f"{path}: cannot read format spec: {exc.strerror}") from None
        except UnicodeDecodeError:
            raise FormatSpecError(f"{path}: format spec is not UTF-8 text") from None
        return parse_spec(text, name=path.stem, origin=str(path))
    known = ", ".join(shipped_spec_names())
    raise FormatSpecError(f"unknown format {name_or_path!r}; expected 'auto', one of {known}, or a .toml spec file")
