"""Chat templates: load by name, file or tokenizer, and render in the same sandbox Hugging Face uses.

Rendering matches `transformers`' `apply_chat_template` string for string: jinja's `ImmutableSandboxedEnvironment`
with ``trim_blocks``/``lstrip_blocks`` and loop controls, the ``tojson`` filter without HTML escaping, and the globals
``raise_exception``, ``strftime_now``, ``dict`` and ``namespace`` — bounded in time, output size, value size and
recursion (`dsprep.sandbox`), since a template is untrusted code. The ``{% generation %}`` tag is supported and
records the character spans it wraps (used only to cross-check masks). Shipped templates live in
``chat_templates/`` (installed as ``dsprep.chat_templates``).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any

import jinja2
import jinja2.ext
import jinja2.nodes
import jinja2.utils

from dsprep.errors import TemplateError, TemplateTimeoutError
from dsprep.sandbox import BoundedSandboxedEnvironment, RenderTimeoutError

__all__ = [
    "ChatTemplate",
    "load_template",
    "parse_template",
    "render",
    "shipped_template_names",
    "template_messages",
    "template_tools",
]

_TRACKING: ContextVar[tuple[list[str], list[tuple[int, int]]] | None] = ContextVar("generation", default=None)


@dataclass(frozen=True)
class ChatTemplate:
    """A chat template's text and where it came from."""

    name: str
    text: str
    origin: str

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()


class _Generation(jinja2.ext.Extension):
    """``{% generation %}…{% endgeneration %}``: renders its body and, in an environment that tracks generation
    (`render_generation_spans`), records its character span. Elsewhere the body is compiled in place, in its own
    scope as the tracked call block has it, without a macro call per block."""

    tags = {"generation"}  # noqa: RUF012 - jinja's extension API

    def __init__(self, environment: jinja2.Environment) -> None:
        super().__init__(environment)
        environment.extend(track_generation=True)

    def parse(self, parser: Any) -> jinja2.nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        if not getattr(self.environment, "track_generation", True):
            return jinja2.nodes.Scope(body).set_lineno(lineno)
        return jinja2.nodes.CallBlock(self.call_method("_support"), [], [], body).set_lineno(lineno)

    def _support(self, caller: Any) -> str:
        text = str(caller())
        tracking = _TRACKING.get()
        if tracking is not None:
            blocks, spans = tracking
            start = len("".join(blocks))
            spans.append((start, start + len(text)))
        return text


def _raise_exception(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def _tojson(
    x: Any, ensure_ascii: bool = False, indent: Any = None, separators: Any = None, sort_keys: bool = False
) -> str:
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    """The time of the render, as `apply_chat_template` gives it; with ``SOURCE_DATE_EPOCH`` set, that time (in UTC)
    instead, so that a template that prints the date (Llama 3.2's) renders the same on any day."""
    pinned = os.environ.get("SOURCE_DATE_EPOCH", "").strip()
    if pinned.isdigit():
        return datetime.fromtimestamp(int(pinned), tz=UTC).strftime(fmt)
    return datetime.now().strftime(fmt)


class _Namespace(jinja2.utils.Namespace):
    """A namespace that refuses underscore-prefixed attributes (no reaching CPython internals)."""

    def __init__(*args: Any, **kwargs: Any) -> None:  # same signature trick as jinja's Namespace
        self, args = args[0], args[1:]
        attrs = dict(*args, **kwargs)
        for name in attrs:
            _Namespace._check(name)
        jinja2.utils.Namespace.__init__(self, attrs)

    def __setitem__(self, name: str, value: Any) -> None:
        _Namespace._check(name)
        jinja2.utils.Namespace.__setitem__(self, name, value)

    @staticmethod
    def _check(name: Any) -> None:
        if isinstance(name, str) and name.startswith("_"):
            raise jinja2.exceptions.SecurityError(f"templates cannot set underscore attributes ({name!r})")


class _Dict:
    def __call__(self, *args: Any, **kwargs: Any) -> dict[Any, Any]:
        return dict(*args, **kwargs)

    def fromkeys(self, *args: Any, **kwargs: Any) -> dict[Any, Any]:
        return dict.fromkeys(*args, **kwargs)


@functools.cache
def _environment(track_generation: bool = False) -> BoundedSandboxedEnvironment:
    env = BoundedSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[_Generation, jinja2.ext.loopcontrols]
    )
    # the attribute _Generation adds (Environment.extend) and reads when it parses
    env.track_generation = track_generation  # type: ignore[attr-defined]
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    env.globals["dict"] = _Dict()
    env.globals["namespace"] = _Namespace
    return env


@functools.lru_cache(maxsize=64)
def _compile(text: str, track_generation: bool = False) -> jinja2.Template:
    return _environment(track_generation).from_string(text)


def parse_template(text: str) -> jinja2.nodes.Template:
    """A template's syntax tree, as `render` compiles it."""
    try:
        return _environment().parse(text)
    except jinja2.exceptions.TemplateSyntaxError as exc:
        raise TemplateError(f"template line {exc.lineno}: {exc.message}") from None


@contextmanager
def _tracking() -> Iterator[tuple[list[str], list[tuple[int, int]]]]:
    state: tuple[list[str], list[tuple[int, int]]] = ([], [])
    token = _TRACKING.set(state)
    try:
        yield state
    finally:
        _TRACKING.reset(token)


def _render_error(template: ChatTemplate, exc: jinja2.exceptions.TemplateError) -> TemplateError:
    kind = TemplateTimeoutError if isinstance(exc, RenderTimeoutError) else TemplateError
    return kind(f"template {template.name}: {exc}")


def render(
    template: ChatTemplate,
    messages: Sequence[Mapping[str, Any]],
    *,
    tools: Sequence[Mapping[str, Any]] | None = None,
    add_generation_prompt: bool = False,
    special_tokens: Mapping[str, str] | None = None,
) -> str:
    """Render a conversation exactly as `tokenizer.apply_chat_template(..., tokenize=False)` would."""
    try:
        compiled = _compile(template.text)
        return compiled.render(
            messages=messages,
            tools=tools,
            documents=None,
            add_generation_prompt=add_generation_prompt,
            **(special_tokens or {}),
        )
    except jinja2.exceptions.TemplateError as exc:
        raise _render_error(template, exc) from None


def render_generation_spans(
    template: ChatTemplate,
    messages: Sequence[Mapping[str, Any]],
    *,
    tools: Sequence[Mapping[str, Any]] | None = None,
    special_tokens: Mapping[str, str] | None = None,
) -> tuple[str, list[tuple[int, int]]]:
    """Render and return the character spans wrapped in ``{% generation %}`` tags (empty if the template has none)."""
    compiled = _compile(template.text, track_generation=True)
    variables = {"messages": messages, "tools": tools, "documents": None, "add_generation_prompt": False}
    with _tracking() as (blocks, spans):
        try:
            for piece in compiled.generate(**variables, **(special_tokens or {})):
                blocks.append(piece)
        except jinja2.exceptions.TemplateError as exc:
            raise _render_error(template, exc) from None
        return "".join(blocks), list(spans)


def template_messages(messages: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Canonical messages as the dicts chat templates read (OpenAI shape; absent fields left out)."""
    out = []
    for m in messages:
        msg: dict[str, Any] = {"role": m["role"]}
        if m.get("content") is not None:
            msg["content"] = m["content"]
        if m.get("reasoning") is not None:
            # transformers fills `thinking` and `reasoning_content` from a message's reasoning; so do we
            msg = {"thinking": m["reasoning"], **msg, "reasoning_content": m["reasoning"]}
        if m.get("tool_calls"):
            msg["tool_calls"] = [_tool_call(c) for c in m["tool_calls"]]
        for key in ("tool_call_id", "name"):
            if m.get(key) is not None:
                msg[key] = m[key]
        out.append(msg)
    return out


def _tool_call(call: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {
        "type": "function",
        "function": {"name": call["name"], "arguments": json.loads(call["arguments"])},
    }
    if call.get("id") is not None:
        out = {"id": call["id"], **out}
    return out


def template_tools(tools: str | None) -> list[dict[str, Any]] | None:
    """The `tools` column (JSON text) as the list chat templates read."""
    return None if tools is None else list(json.loads(tools))


@functools.cache
def shipped_template_names() -> tuple[str, ...]:
    """Names of the templates shipped in `dsprep.chat_templates`, sorted."""
    files = resources.files("dsprep.chat_templates").iterdir()
    return tuple(sorted(f.name.removesuffix(".jinja") for f in files if f.name.endswith(".jinja")))


def _checked(template: ChatTemplate, where: Callable[[int], str]) -> ChatTemplate:
    """`template`, once its text is known to be a template: not blank, valid Jinja syntax; else a one-line
    `TemplateError` starting with `where` (given the line)."""
    if not template.text.strip():
        raise TemplateError(f"{where(1)}: the template is empty")
    try:
        _compile(template.text)
    except jinja2.exceptions.TemplateSyntaxError as exc:
        raise TemplateError(f"{where(exc.lineno)}: template syntax error: {exc.message}") from None
    return template


def load_template(name_or_path: str, tokenizer_template: str | None = None) -> ChatTemplate:
    """A shipped template by name, a ``.jinja`` file, or ``tokenizer`` (the tokenizer's own `chat_template`)."""
    if name_or_path == "tokenizer":
        if not tokenizer_template:
            raise TemplateError(
                "the tokenizer has no chat_template (or, of several named ones, none named 'default'); "
                "pass --template NAME or a .jinja file"
            )
        template = ChatTemplate("tokenizer", tokenizer_template, "the tokenizer's chat_template")
        return _checked(template, lambda line: f"template tokenizer: its chat_template, line {line}")
    if name_or_path in shipped_template_names():
        text = resources.files("dsprep.chat_templates").joinpath(f"{name_or_path}.jinja").read_text(encoding="utf-8")
        return ChatTemplate(name_or_path, text, f"chat_templates/{name_or_path}.jinja")
    path = Path(name_or_path)
    if path.suffix == ".jinja" or path.is_file():
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise TemplateError(f"{path}: cannot read template: {exc}") from None
        return _checked(ChatTemplate(path.stem, text, str(path)), lambda line: f"{path}:{line}")
    known = ", ".join(shipped_template_names())
    raise TemplateError(f"unknown template {name_or_path!r}; expected 'tokenizer', a .jinja file, or one of: {known}")
