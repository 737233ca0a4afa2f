"""Shared pieces of the benchmarks: a seeded multi-turn chat corpus, a wall/CPU timer, and report helpers.

Standard library only, so the benchmark scripts and the small measurement scripts they run in trainers' environments
can both import it (each script puts ``benchmarks/`` first on ``sys.path`` by being run from there).
"""

from __future__ import annotations

import math
import os
import random
import resource
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from itertools import accumulate
from pathlib import Path
from typing import Any

__all__ = [
    "Corpus",
    "Timer",
    "compile_dsprep",
    "convert_flags",
    "dsprep_cmd",
    "offline_hf",
    "openai_record",
    "tree_pss_mb",
    "verdict",
    "version",
]

# --- corpus ----------------------------------------------------------------------------------------------------------
ONSETS = ("b", "c", "d", "f", "g", "h", "j", "k", "l", "m", "n", "p", "r", "s", "t", "v", "w", "y", "z", "bl",
          "br", "ch", "cl", "cr", "dr", "fl", "fr", "gl", "gr", "pl", "pr", "sh", "sk", "sl",
          "sp", "st", "str", "th", "tr", "wh")  # fmt: skip
NUCLEI = ("a", "e", "i", "o", "u", "a", "e", "i", "o", "u", "ai", "ea", "ee", "ie", "oa", "ou", "oo", "ay")
CODAS = ["", "", "", "n", "r", "s", "t", "l", "m", "nd", "ng", "nt", "st", "ck", "rd", "ll", "ss", "th"]
VOCAB_SIZE = 4000
ZIPF_S = 1.05
ZIPF_Q = 2.7  # Zipf-Mandelbrot offset: the top word is ~4% of all words, like English 'the'
TURN_WEIGHTS = (40, 27, 13, 9, 6, 5)  # 1..6 user/assistant turns
CODE_WORDS = ("def", "return", "for", "in", "if", "else", "while", "import", "print", "len", "range", "None", "True")


def build_vocab(rng: random.Random) -> list[str]:
    """A few thousand distinct pseudo-English words; shorter words get the frequent (low) Zipf ranks."""
    words: set[str] = set()
    while len(words) < VOCAB_SIZE:
        n = rng.choices((1, 2, 3, 4), weights=(30, 40, 22, 8))[0]
        word = "".join(rng.choice(ONSETS) + rng.choice(NUCLEI) + rng.choice(CODAS) for _ in range(n))
        if len(word) <= 14:
            words.add(word)
    ranked = sorted(words, key=lambda w: (len(w), w))
    # mostly short-first, with some shuffling so frequency is not a pure function of length
    for i in range(len(ranked) - 1):
        if rng.random() < 0.3:
            j = min(len(ranked) - 1, i + rng.randint(1, 40))
            ranked[i], ranked[j] = ranked[j], ranked[i]
    return ranked


class Corpus:
    """Deterministic text generator over a fixed vocabulary."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.vocab = build_vocab(self.rng)
        self.cum = list(accumulate(1.0 / (r + 1 + ZIPF_Q) ** ZIPF_S for r in range(len(self.vocab))))

    def words(self, n: int) -> list[str]:
        return self.rng.choices(self.vocab, cum_weights=self.cum, k=n)

    def sentences(self, n_words: int) -> list[str]:
        rng, out, words, i = self.rng, [], self.words(n_words), 0
        while i < n_words:
            k = min(n_words - i, rng.randint(5, 24))
            chunk = words[i : i + k]
            i += k
            chunk[0] = chunk[0].capitalize()
            if k > 8 and rng.random() < 0.45:
                at = rng.randint(2, k - 3)
                chunk[at] += ","
            if rng.random() < 0.04:
                chunk[rng.randrange(k)] = str(rng.randint(2, 2030))
            end = rng.choices((".", "?", "!", ":"), weights=(85, 8, 4, 3))[0] if rng.random() > 0.02 else ""
            out.append(" ".join(chunk) + end)
        return out

    def prose(self, n_words: int) -> str:
        sents, rng = self.sentences(n_words), self.rng
        paras, i = [], 0
        while i < len(sents):
            k = rng.randint(2, 6)
            paras.append(" ".join(sents[i : i + k]))
            i += k
        return "\n\n".join(paras)

    def bullet_list(self) -> str:
        rng = self.rng
        numbered = rng.random() < 0.4
        items = [self.sentences(rng.randint(3, 14))[0] for _ in range(rng.randint(2, 6))]
        return "\n".join(f"{i + 1}. {s}" if numbered else f"- {s}" for i, s in enumerate(items))

    def code_block(self) -> str:
        rng = self.rng
        name = "_".join(self.words(rng.randint(1, 3)))
        args = ", ".join(self.words(rng.randint(0, 3)))
        lines = [f"def {name}({args}):"]
        for _ in range(rng.randint(2, 10)):
            left, right = self.words(2)
            kw = rng.choice(CODE_WORDS)
            lines.append(rng.choice((f"    {left} = {kw}({right})", f"    {left}.{right}({rng.randint(0, 99)})",
                                     f"    if {left} > {rng.randint(0, 9)}:\n        {kw} {right}")))  # fmt: skip
        lines.append(f"    return {self.words(1)[0]}")
        lang = rng.choice(("python", "python", "", "py"))
        return f"```{lang}\n" + "\n".join(lines) + "\n```"

    def length(self, median: float, sigma: float, lo: int, hi: int) -> int:
        return max(lo, min(hi, int(self.rng.lognormvariate(math.log(median), sigma))))

    def message(self, role: str) -> str:
        rng = self.rng
        if role == "system":
            return self.prose(self.length(30, 0.7, 4, 400))
        if role == "user":
            text = self.prose(self.length(45, 0.9, 2, 1500))
            if rng.random() < 0.05:
                text += "\n\n" + self.code_block()
            return text
        text = self.prose(self.length(150, 0.85, 3, 3000))
        if rng.random() < 0.18:
            text += "\n\n" + self.bullet_list()
            if rng.random() < 0.6:
                text += "\n\n" + self.prose(self.length(30, 0.6, 3, 200))
        if rng.random() < 0.12:
            at = text.find("\n\n")
            block = self.code_block()
            text = f"{text[:at]}\n\n{block}{text[at:]}" if at > 0 else f"{text}\n\n{block}"
        return text

    def conversation(self) -> list[tuple[str, str]]:
        rng = self.rng
        msgs = [("system", self.message("system"))] if rng.random() < 0.7 else []
        for _ in range(rng.choices(range(1, 7), weights=TURN_WEIGHTS)[0]):
            msgs += [("user", self.message("user")), ("assistant", self.message("assistant"))]
        return msgs


# --- environment -------------------------------------------------------------------------------------------------
def offline_hf(prefix: str) -> tempfile.TemporaryDirectory[str]:
    """Before transformers/datasets are imported: offline, quiet, tokenizer threads on, HF caches in a fresh folder.

    Keep the returned folder alive for as long as the process runs.
    """
    os.environ["TOKENIZERS_PARALLELISM"] = "true"
    for name, value in (("HF_HUB_OFFLINE", "1"), ("TRANSFORMERS_VERBOSITY", "error"), ("DO_NOT_TRACK", "1"),
                        ("AXOLOTL_DO_NOT_TRACK", "1")):  # fmt: skip
        os.environ.setdefault(name, value)
    folder = tempfile.TemporaryDirectory(prefix=prefix)
    os.environ["HF_HOME"] = folder.name
    os.environ["HF_DATASETS_CACHE"] = os.path.join(folder.name, "datasets")
    return folder


# --- the dsprep command line ----------------------------------------------------------------------------------------
def compile_dsprep() -> None:
    """Write the bytecode of the dsprep package the running Python imports, as installing a wheel does: a checkout
    installed in editable mode has none, and where ``PYTHONDONTWRITEBYTECODE`` is set each run would compile every
    module again (0.1 s of start-up here), which installed peers never do."""
    import compileall
    import importlib.util

    spec = importlib.util.find_spec("dsprep")
    if spec is not None and spec.submodule_search_locations:
        for folder in spec.submodule_search_locations:
            compileall.compile_dir(folder, quiet=1)


def dsprep_cmd() -> list[str]:
    """The `dsprep` command of the running Python's environment (its bytecode compiled first: `compile_dsprep`)."""
    compile_dsprep()
    script = os.path.join(os.path.dirname(sys.executable), "dsprep")
    return [script] if os.path.exists(script) else [sys.executable, "-m", "dsprep"]


def convert_flags(dsprep: list[str]) -> set[str]:
    """Which of the newer `dsprep convert` options (--workers, --no-cache) the installed dsprep has."""
    out = subprocess.run([*dsprep, "convert", "--help"], capture_output=True, text=True, check=False).stdout
    return {flag for flag in ("--workers", "--no-cache") if flag in out}


# --- measurement helpers ---------------------------------------------------------------------------------------------
def _cpu_seconds() -> float:
    """User + system CPU time of this process (all threads) and of its reaped children (datasets' workers)."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


class Timer:
    """Wall and CPU seconds of a block, and the 1-minute load average when it started (the machine may be shared)."""

    def __enter__(self) -> Timer:
        self.load = os.getloadavg()[0]
        self._wall, self._cpu = time.perf_counter(), _cpu_seconds()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self._wall
        self.cpu = _cpu_seconds() - self._cpu


def proc_field_mb(pid: int, file: str, key: str) -> float | None:
    """A ``key: N kB`` line of ``/proc/PID/FILE`` (``status``'s VmRSS, ``smaps_rollup``'s Pss) in MB; None if gone."""
    try:
        with open(f"/proc/{pid}/{file}") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def process_stats() -> dict[int, list[str]]:
    """Every process's ``/proc/PID/stat`` fields after the command name (field 1 is the parent's pid)."""
    stats: dict[int, list[str]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            stats[int(stat.parent.name)] = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
    return stats


def tree_pss_mb(pid: int) -> float | None:
    """Summed PSS (shared pages divided among their users) of `pid` and all its descendants, in MB."""
    children: dict[int, list[int]] = {}
    for child, fields in process_stats().items():
        children.setdefault(int(fields[1]), []).append(child)
    total, stack = 0.0, [pid]
    while stack:
        p = stack.pop()
        total += proc_field_mb(p, "smaps_rollup", "Pss") or 0.0
        stack.extend(children.get(p, []))
    return total or None


def wait_sampling(proc: subprocess.Popen[bytes], sample: Callable[[], None], every: float) -> tuple[float, Any]:
    """Call `sample` every `every` seconds until `proc` exits; reap it with wait4 and set its returncode.

    Returns (wall seconds since this call, the child's rusage).
    """
    start = time.perf_counter()
    done = threading.Event()

    def loop() -> None:
        while not done.wait(every):
            sample()

    sampler = threading.Thread(target=loop, daemon=True)
    sampler.start()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    done.set()
    sampler.join()
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped by wait4; tell Popen
    return wall, usage


def version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as v

    try:
        return v(dist)
    except PackageNotFoundError:
        return "not installed"


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def openai_record(conversation: list[tuple[str, str]]) -> dict[str, list[dict[str, str]]]:
    """A conversation as an OpenAI-chat JSONL record: ``{"messages": [{"role": ..., "content": ...}, ...]}``."""
    return {"messages": [{"role": role, "content": content} for role, content in conversation]}
