"""Bounded rendering for chat templates: the sandbox plus time, output-size, recursion and value-size limits.

A chat template is code that came with a tokenizer or a file, so dsprep treats it as hostile. jinja2's
`ImmutableSandboxedEnvironment` already refuses underscore attributes, function internals and mutation of known
containers; `BoundedSandboxedEnvironment` adds what it lacks:

- reaching an unsafe attribute (``__class__``, ``__globals__``, ``append``, …) is an error at once, not a silent
  undefined that renders as an empty string;
- ``range`` longer than `BoundedSandboxedEnvironment.max_range` items, ``*``/``+``/``~``/``%`` and string methods
  or filters (``center``, ``ljust``, ``indent``, ``replace``, ``join``, ``format``, ``batch``, ``lipsum``, …) whose
  result would hold more than `max_string` characters or items, and integers beyond `max_int_bits` are refused
  *before* the value is built;
- macro calls nest at most `max_call_depth` deep, and templates nest at most as deep as Python's parser allows;
- a render stops after `render_seconds` of wall-clock time (a watchdog thread raises into the rendering thread, so
  even a loop that calls nothing is interrupted) or once it has produced `max_output` characters.

Every refusal is a `TemplateLimitError`, a `jinja2.exceptions.SecurityError`, so code that already turns jinja
errors into `dsprep.errors.TemplateError` (``template NAME: …``) reports it as such. Any other exception a render
raises (``TypeError`` from ``1 + 'a'``, ``RecursionError``, ``MemoryError``) is turned into one too, so a template
can fail a row but never crash a run. `render_bounded` renders a template with a name for its messages.
"""

from __future__ import annotations

import ctypes
import functools
import math
import os
import re
import string
import threading
import time
import weakref
from collections.abc import Callable, Generator, Iterator
from contextvars import ContextVar
from typing import Any, cast

import jinja2
import jinja2.compiler
import jinja2.ext
import jinja2.filters
import jinja2.nodes
import jinja2.runtime
import jinja2.utils
from jinja2.sandbox import ImmutableSandboxedEnvironment

from dsprep.errors import TemplateError, TemplateTimeoutError

__all__ = [
    "BoundedSandboxedEnvironment",
    "BoundedTemplate",
    "RenderTimeoutError",
    "TemplateLimitError",
    "default_environment",
    "render_bounded",
]

MAX_RANGE = 100_000  # items in one range()
MAX_STRING = 16 << 20  # characters (or items) in one intermediate value
MAX_OUTPUT = 64 << 20  # characters one render may produce
MAX_INT_BITS = 8192  # integers a template may build (str() of larger ones fails in CPython anyway)
MAX_CALL_DEPTH = 64  # nested macro calls
RENDER_SECONDS = 10.0  # wall-clock time one render may take
LIPSUM_MAX = 100  # paragraphs lipsum() may generate

_DEPTH: ContextVar[int] = ContextVar("dsprep_template_call_depth", default=0)


class TemplateLimitError(jinja2.exceptions.SecurityError):
    """A template reached for something the sandbox refuses, or went over a time, size or depth limit."""


class RenderTimeoutError(TemplateLimitError):
    """A render went over its wall-clock limit."""


class _Deadline(BaseException):
    """Raised into a rendering thread by the watchdog once its wall-clock limit has passed."""


# --- the wall-clock watchdog -----------------------------------------------------------------------------------


class _Watchdog:
    """One daemon thread that raises `_Deadline` into threads whose render has run past its deadline.

    While renders keep coming it wakes every `TICK` seconds at most (or at the earliest deadline, where that is
    sooner), so a render that starts with a deadline past its next wake-up registers it without waking the thread:
    a render costs a lock and a dict entry, not a thread switch. After `IDLE` seconds without a render it sleeps
    until the next one starts.

    Python drops an exception raised inside a garbage-collector callback or a ``__del__`` method, and an asynchronous
    exception lands in whatever Python code the thread runs next, so a deadline is raised again every `REFIRE`
    seconds until the render ends its limit. Ending a limit whose deadline was raised clears a raise not yet
    delivered, so none reaches the code that runs after the render.
    """

    TICK = 1.0
    IDLE = 30.0
    REFIRE = 0.5

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._deadlines: dict[int, _Entry] = {}  # thread id -> the limit it is in
        self._thread: threading.Thread | None = None
        self._next_check = math.inf  # when the thread wakes next (inf: only when woken)
        self._last_render = -math.inf

    def reset_after_fork(self) -> None:
        """In a forked child: the parent's watchdog thread is gone and its lock may have been held; start afresh."""
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._deadlines = {}
        self._thread = None
        self._next_check = math.inf
        self._last_render = -math.inf

    def _ensure_thread(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._loop, name="dsprep-template-watchdog", daemon=True)
            self._thread.start()

    def _loop(self) -> None:
        with self._lock:
            while True:
                now = time.monotonic()
                for tid, entry in list(self._deadlines.items()):
                    if entry.owner() is None:  # its limit is gone without ending (no render runs under it)
                        del self._deadlines[tid]
                    elif now >= entry.due:
                        if _raise_deadline(tid):
                            entry.fired, entry.due = True, now + self.REFIRE
                        else:  # the thread is gone
                            del self._deadlines[tid]
                earliest = min((e.due for e in self._deadlines.values()), default=math.inf)
                busy = self._deadlines or now - self._last_render < self.IDLE
                self._next_check = min(earliest, now + self.TICK) if busy else math.inf
                self._wake.wait(None if self._next_check == math.inf else self._next_check - now)

    def limit(self, seconds: float) -> _Limited:
        """A context in which `_Deadline` is raised once `seconds` have passed."""
        return _Limited(self, seconds)

    def start(self, limit: _Limited) -> None:
        """Register the calling thread's deadline, and give `limit` what `end` needs to remove it."""
        tid = threading.get_ident()
        with self._lock:
            outer = self._deadlines.get(tid)
            if outer is not None and outer.owner() is None:
                outer = None  # left by a limit that is gone: no render runs under it
            now = time.monotonic()
            deadline = now + limit.seconds
            if outer is not None:  # a nested render keeps the outer (earlier) deadline
                deadline = min(deadline, outer.due)
            entry = _Entry(tid, deadline, outer, weakref.ref(limit))
            # registered and handed over with no call between: a raise (the deadline of an outer render, Ctrl-C)
            # can land before or after the two, never between them, so whatever registered the limit can end it
            self._deadlines[tid] = entry
            limit._started = entry
            self._last_render = now
            if deadline < self._next_check:  # the thread would wake too late (or is not running): wake it now
                self._ensure_thread()
                self._next_check = deadline
                self._wake.notify()

    def end(self, entry: _Entry) -> None:
        """Remove a limit `start` registered (again: a no-op), clearing a raise of its deadline not yet delivered."""
        with self._lock:
            if self._deadlines.get(entry.tid) is entry:
                if entry.outer is not None:
                    self._deadlines[entry.tid] = entry.outer
                else:
                    del self._deadlines[entry.tid]
                if entry.fired:  # a C call, made inline: no Python frame where a raise could land before it
                    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(entry.tid), None)


class _Entry:
    """One thread's limit: when the watchdog raises next, the limit it is nested in, and the `_Limited` it belongs to
    (an entry whose `_Limited` is gone was never ended, and is dropped)."""

    __slots__ = ("due", "fired", "outer", "owner", "tid")

    def __init__(self, tid: int, due: float, outer: _Entry | None, owner: weakref.ReferenceType[_Limited]) -> None:
        self.tid = tid
        self.due = due
        self.outer = outer
        self.owner = owner
        self.fired = False


def _raise_deadline(tid: int) -> bool:
    """Have thread `tid` raise `_Deadline` at its next bytecode check; False if there is no such thread."""
    return bool(ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(tid), ctypes.py_object(_Deadline)))


class _Limited:
    """`_Watchdog.limit` as a plain context manager (a render enters one per piece it yields)."""

    __slots__ = ("__weakref__", "_started", "seconds", "watchdog")

    def __init__(self, watchdog: _Watchdog, seconds: float) -> None:
        self.watchdog = watchdog
        self.seconds = seconds
        self._started: _Entry | None = None  # set by `_Watchdog.start`

    def __enter__(self) -> None:
        self.watchdog.start(self)

    def __exit__(self, *exc: object) -> None:
        self.finish()

    def finish(self) -> None:
        """End the limit (once); `_Converted` calls it again, for a raise that landed as `__enter__` returned or as
        `__exit__` began."""
        if self._started is not None:
            self.watchdog.end(self._started)
            self._started = None  # only once ended: a deadline raised on entering `end` leaves it to finish again


_WATCHDOG = _Watchdog()
if hasattr(os, "register_at_fork"):  # worker processes forked after a render must not inherit a held lock
    os.register_at_fork(after_in_child=_WATCHDOG.reset_after_fork)


# --- size checks ------------------------------------------------------------------------------------------------

_PERCENT_NUMBERS = re.compile(r"%(?:\([^)]*\))?[-#0 +]*(\*|\d+)?(?:\.(\*|\d+))?")


def _size(value: Any) -> int:
    return len(value) if isinstance(value, (str, bytes, list, tuple, dict)) else 0


class _Limits:
    """The limits of one environment, as checks that raise `TemplateLimitError`."""

    def __init__(self, env: BoundedSandboxedEnvironment) -> None:
        self.env = env

    def size(self, n: int, what: str) -> None:
        if n > self.env.max_string:
            raise TemplateLimitError(f"{what} would hold {n} characters or items, over the limit {self.env.max_string}")

    def width(self, value: Any, what: str) -> None:
        if isinstance(value, int) and not isinstance(value, bool):
            self.size(value, what)

    def int_bits(self, bits: int, what: str) -> None:
        if bits > self.env.max_int_bits:
            raise TemplateLimitError(f"{what} would have about {bits} bits, over the limit {self.env.max_int_bits}")

    def format_spec(self, fmt: str) -> None:
        """A str.format() pattern: refuse nested (computed) widths and widths over the limit."""
        try:
            fields = list(string.Formatter().parse(fmt))
        except ValueError:
            return  # format() itself reports the bad pattern
        for _, _, spec, _ in fields:
            if not spec:
                continue
            if "{" in spec:
                raise TemplateLimitError("format() widths computed from arguments are not allowed in templates")
            for number in re.findall(r"\d+", spec):
                self.size(int(number) if len(number) < 12 else 1 << 62, "a format() width")

    def percent(self, fmt: str, args: Any) -> None:
        """A ``%`` pattern: widths and precisions (given or passed with ``*``) within the limit."""
        star_args = list(args) if isinstance(args, tuple) else [args]
        for m in _PERCENT_NUMBERS.finditer(fmt):
            for group in m.groups():
                if group == "*":
                    for a in star_args:
                        self.width(a, "a % width")
                elif group:
                    self.size(int(group) if len(group) < 12 else 1 << 62, "a % width")


# --- the environment --------------------------------------------------------------------------------------------


class _BoundedCodeGenerator(jinja2.compiler.CodeGenerator):
    """Routes ``~`` (string concatenation) through the environment, so its result size can be checked."""

    def visit_Concat(self, node: jinja2.nodes.Concat, frame: Any) -> None:
        self.write("environment.bounded_concat((")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write("))")


class BoundedTemplate(jinja2.Template):
    """A template whose `render` and `generate` run under the environment's time and output limits."""

    environment: BoundedSandboxedEnvironment

    def render(self, *args: Any, **kwargs: Any) -> str:
        env = self.environment
        pieces: list[str] = []
        produced = 0
        with _Converted(env) as limit, limit:
            for piece in super().generate(*args, **kwargs):
                produced += len(piece)
                if produced > env.max_output:
                    raise TemplateLimitError(f"the rendered text is longer than {env.max_output} characters")
                pieces.append(piece)
        return "".join(pieces)

    def generate(self, *args: Any, **kwargs: Any) -> Iterator[str]:
        env = self.environment
        pieces = cast(Generator[str, None, None], super().generate(*args, **kwargs))
        produced = 0
        try:
            while True:
                with _Converted(env) as limit, limit:
                    try:
                        piece = next(pieces)
                    except StopIteration:
                        return
                produced += len(piece)
                if produced > env.max_output:
                    raise TemplateLimitError(f"the rendered text is longer than {env.max_output} characters")
                yield piece
        finally:
            pieces.close()


class _Converted:
    """Turn a deadline, deep recursion, exhaustion or any non-jinja exception into a `TemplateLimitError`.

    Entering it gives the time limit to enter next (``with _Converted(env) as limit, limit:``). A raise that lands
    as the limit's ``__enter__`` returns or its ``__exit__`` begins skips that ``__exit__``, so this one ends the
    limit too.
    """

    __slots__ = ("env", "limit")

    def __init__(self, env: BoundedSandboxedEnvironment) -> None:
        self.env = env
        self.limit = _WATCHDOG.limit(env.render_seconds)

    def __enter__(self) -> _Limited:
        return self.limit

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        self.limit.finish()
        if kind is None or issubclass(kind, jinja2.exceptions.TemplateError):
            return
        if issubclass(kind, _Deadline):
            raise RenderTimeoutError(f"rendering took longer than {self.env.render_seconds:g} s") from None
        if issubclass(kind, RecursionError):
            raise TemplateLimitError("recursion too deep") from None
        if issubclass(kind, MemoryError):
            raise TemplateLimitError("out of memory while rendering") from None
        if issubclass(kind, Exception):
            raise TemplateLimitError(f"{kind.__name__}: {exc}") from None


class BoundedSandboxedEnvironment(ImmutableSandboxedEnvironment):
    """`ImmutableSandboxedEnvironment` with time, output, value-size and recursion limits (see the module doc).

    The limits are instance attributes; pass them as keyword arguments to change them.
    """

    template_class = BoundedTemplate
    code_generator_class = _BoundedCodeGenerator
    intercepted_binops = frozenset({"*", "**", "+", "%", "//", "/"})

    def __init__(
        self,
        *args: Any,
        max_range: int = MAX_RANGE,
        max_string: int = MAX_STRING,
        max_output: int = MAX_OUTPUT,
        max_int_bits: int = MAX_INT_BITS,
        max_call_depth: int = MAX_CALL_DEPTH,
        render_seconds: float = RENDER_SECONDS,
        **kwargs: Any,
    ) -> None:
        self.max_range = max_range
        self.max_string = max_string
        self.max_output = max_output
        self.max_int_bits = max_int_bits
        self.max_call_depth = max_call_depth
        self.render_seconds = render_seconds
        self.limits = _Limits(self)
        super().__init__(*args, **kwargs)
        self.globals["range"] = self._range
        self.globals["lipsum"] = self._lipsum
        self.filters.update(self._bounded_filters())

    # -- compilation: a template nested too deeply for the parser is a syntax error, not a crash
    def compile(self, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        try:
            return super().compile(*args, **kwargs)
        except (RecursionError, MemoryError):
            raise jinja2.exceptions.TemplateSyntaxError("the template nests too deeply", 1) from None

    # -- attributes: refuse at once
    def unsafe_undefined(self, obj: Any, attribute: str) -> jinja2.Undefined:
        raise TemplateLimitError(f"access to attribute {attribute!r} of a {type(obj).__name__!r} object is refused")

    # -- calls: str methods that grow their input, macro depth
    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        self = __self
        if isinstance(__obj, jinja2.runtime.Macro):
            depth = _DEPTH.get()
            if depth >= self.max_call_depth:
                raise TemplateLimitError(f"macro calls nest deeper than {self.max_call_depth}")
            token = _DEPTH.set(depth + 1)
            try:
                return ImmutableSandboxedEnvironment.call(self, __context, __obj, *args, **kwargs)
            finally:
                _DEPTH.reset(token)
        owner = getattr(__obj, "__self__", None)
        if isinstance(owner, str):
            self._check_str_method(owner, getattr(__obj, "__name__", ""), args, kwargs)
        return ImmutableSandboxedEnvironment.call(self, __context, __obj, *args, **kwargs)

    def _check_str_method(self, s: str, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        if name in ("ljust", "rjust", "center", "zfill") and args:
            self.limits.width(args[0], f"str.{name}()")
        elif name == "expandtabs":
            tab = args[0] if args else kwargs.get("tabsize", 8)
            if isinstance(tab, int):
                self.limits.size(len(s) + s.count("\t") * max(tab, 0), "str.expandtabs()")
        elif name == "replace" and len(args) >= 2 and isinstance(args[0], str) and isinstance(args[1], str):
            hits = (len(s) + 1) if args[0] == "" else s.count(args[0])
            self.limits.size(len(s) + hits * len(args[1]), "str.replace()")
        elif name == "join" and args:
            self._check_join(s, args[0])

    def _check_join(self, sep: str, items: Any) -> None:
        if isinstance(items, (list, tuple)):
            total = sum(len(i) if isinstance(i, str) else 0 for i in items) + len(sep) * max(len(items) - 1, 0)
            self.limits.size(total, "join()")

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        wrapped = super().wrap_str_format(value)
        if wrapped is None:
            return None
        fmt = value.__self__
        limits = self.limits

        def checked(*args: Any, **kwargs: Any) -> str:
            limits.format_spec(fmt)
            biggest = max((_size(a) for a in (*args, *kwargs.values())), default=0)
            limits.size(len(fmt) + fmt.count("{") * biggest, "format()")
            return wrapped(*args, **kwargs)

        return checked

    # -- operators
    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if operator == "+" and type(left) is str and type(right) is str:  # the common case, checked inline
            if len(left) + len(right) > self.max_string:
                self.limits.size(len(left) + len(right), "a concatenation")
            return left + right
        check = self.limits
        if operator == "*":
            for seq, n in ((left, right), (right, left)):
                if isinstance(seq, (str, list, tuple)) and isinstance(n, int):
                    check.size(len(seq) * max(n, 0), "a repetition")
            if isinstance(left, int) and isinstance(right, int):
                check.int_bits(left.bit_length() + right.bit_length(), "a product")
        elif operator == "**":
            if isinstance(left, int) and isinstance(right, int) and abs(left) > 1 and right > 0:
                check.int_bits(right * left.bit_length(), "a power")
            elif isinstance(right, (int, float)) and abs(right) > self.max_int_bits:
                check.int_bits(int(abs(right)), "a power")
        elif operator == "+":
            if isinstance(left, (str, list, tuple)) and isinstance(right, (str, list, tuple)):
                check.size(len(left) + len(right), "a concatenation")
        elif operator == "%" and isinstance(left, str):
            check.percent(left, right)
            check.size(len(left) + left.count("%") * max(_size(right), _max_item(right)), "a % format")
        return super().call_binop(context, operator, left, right)

    def bounded_concat(self, values: tuple[Any, ...]) -> str:
        """``a ~ b ~ …``: jinja's concatenation, refused when the result would be over the size limit."""
        parts = [str(v) for v in values]
        self.limits.size(sum(map(len, parts)), "a ~ concatenation")
        return "".join(parts)

    # -- globals
    def _range(self, *args: int) -> Iterator[int]:
        r = range(*args)
        if len(r) > self.max_range:
            raise TemplateLimitError(f"range() of {len(r)} items, over the limit {self.max_range}")
        return iter(r)

    def _lipsum(self, n: int = 5, html: bool = True, min: int = 20, max: int = 100) -> str:
        for value in (n, min, max):
            if isinstance(value, int) and value > LIPSUM_MAX:
                raise TemplateLimitError(f"lipsum() arguments over {LIPSUM_MAX} are not allowed")
        return str(jinja2.utils.generate_lorem_ipsum(n=n, html=html, min=min, max=max))

    # -- filters that can grow a small input into a huge one
    def _bounded_filters(self) -> dict[str, Callable[..., Any]]:
        f = jinja2.filters
        check = self.limits

        def center(value: Any, width: int = 80) -> str:
            check.width(width, "center")
            return f.do_center(value, width)

        def indent(s: str, width: int | str = 4, first: bool = False, blank: bool = False) -> str:
            pad = len(width) if isinstance(width, str) else width if isinstance(width, int) else 0
            check.size(len(str(s)) + (str(s).count("\n") + 1) * max(pad, 0), "indent")
            return f.do_indent(s, width, first, blank)

        @jinja2.pass_eval_context
        def replace(eval_ctx: Any, s: str, old: str, new: str, count: int | None = None) -> str:
            text = str(s)
            hits = (len(text) + 1) if str(old) == "" else text.count(str(old))
            check.size(len(text) + hits * len(str(new)), "replace")
            return f.do_replace(eval_ctx, s, old, new, count)

        @jinja2.pass_eval_context
        def join(eval_ctx: Any, value: Any, d: str = "", attribute: Any = None) -> str:
            if isinstance(value, (list, tuple)):
                total = sum(len(str(v)) for v in value) + len(str(d)) * max(len(value) - 1, 0)
                check.size(total, "join")
            return f.sync_do_join(eval_ctx, value, d, attribute)

        def format_(value: str, *args: Any, **kwargs: Any) -> str:
            check.percent(str(value), args if args else kwargs)
            biggest = max((_size(a) for a in (*args, *kwargs.values())), default=0)
            check.size(len(str(value)) + str(value).count("%") * biggest, "format")
            return f.do_format(value, *args, **kwargs)

        def batch(value: Any, linecount: int, fill_with: Any = None) -> Any:
            if fill_with is not None:
                check.width(linecount, "batch")
            return f.do_batch(value, linecount, fill_with)

        def slice_(value: Any, slices: int, fill_with: Any = None) -> Any:
            check.width(slices, "slice")
            return f.sync_do_slice(value, slices, fill_with)

        return {
            "center": center,
            "indent": indent,
            "replace": replace,
            "join": join,
            "format": format_,
            "batch": batch,
            "slice": slice_,
        }


def _max_item(value: Any) -> int:
    if isinstance(value, tuple):
        return max((_size(v) for v in value), default=0)
    if isinstance(value, dict):
        return max((_size(v) for v in value.values()), default=0)
    return 0


@functools.cache
def default_environment() -> BoundedSandboxedEnvironment:
    """A bounded environment configured as ``transformers`` configures its chat-template sandbox."""
    return BoundedSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])


def render_bounded(
    template: jinja2.Template | str,
    name: str,
    /,
    environment: BoundedSandboxedEnvironment | None = None,
    **variables: Any,
) -> str:
    """Compile (when given text) and render a template under its environment's limits.

    Any failure, compiling or rendering, is a `dsprep.errors.TemplateError` naming the template.
    """
    try:
        if isinstance(template, str):
            template = (environment or default_environment()).from_string(template)
        return template.render(**variables)
    except RenderTimeoutError as exc:
        raise TemplateTimeoutError(f"template {name}: {exc}") from None
    except jinja2.exceptions.TemplateError as exc:
        raise TemplateError(f"template {name}: {exc}") from None
