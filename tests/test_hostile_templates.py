"""Hostile chat templates are refused or bounded with a `TemplateError` naming the template; benign ones render.

Every payload runs through `dsprep.sandbox` directly, and through `dsprep.templates.render` (the path a convert
takes, for shipped, file and tokenizer templates alike).
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jinja2.ext
import pytest
from click.testing import CliRunner

from dsprep import templates
from dsprep.errors import TemplateError
from dsprep.sandbox import (
    _WATCHDOG,
    RENDER_SECONDS,
    BoundedSandboxedEnvironment,
    RenderTimeoutError,
    _Deadline,
    render_bounded,
)

SECRET = "dsprep-secret-8c1f0e"
MESSAGES = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]

# (id, template text, bomb): a bomb would hang or exhaust memory in an unbounded sandbox
PAYLOADS: list[tuple[str, str, bool]] = [
    ("str_class_mro_subclasses", "{{ ''.__class__.__mro__[1].__subclasses__() }}", False),
    ("tuple_base_subclasses", "{% for c in ().__class__.__base__.__subclasses__() %}{{ c }}{% endfor %}", False),
    ("messages_class", "{{ messages.__class__ }}", False),
    ("cycler_globals_os_environ", "{{ cycler.__init__.__globals__.os.environ }}", False),
    (
        "joiner_globals_builtins_open",
        "{{ joiner.__init__.__globals__.__builtins__.open('/etc/passwd').read() }}",
        False,
    ),
    ("namespace_init_globals", "{{ namespace.__init__.__globals__['__builtins__']['__import__']('os') }}", False),
    ("lipsum_globals_os_popen", "{{ lipsum.__globals__['os'].popen('id').read() }}", False),
    ("raise_exception_globals", "{{ raise_exception.__globals__['__builtins__'] }}", False),
    ("strftime_code", "{{ strftime_now.__code__.co_consts }}", False),
    ("function_attribute_dict", "{{ raise_exception.__dict__ }}", False),
    ("self_context", "{{ self._TemplateReference__context }}", False),
    ("self_init_globals", "{{ self.__init__.__globals__ }}", False),
    ("config_items", "{{ config.items() }}", False),
    ("request_application_globals", "{{ request.application.__globals__.__builtins__ }}", False),
    ("getattr_filter_class", "{{ (messages|attr('__class__')) }}", False),
    ("include_file", "{% include '/etc/passwd' %}", False),
    ("import_module", "{% import 'os' as os %}{{ os.environ }}", False),
    ("list_append_mutation", "{{ messages.append({'role': 'system'}) }}", False),
    ("str_format_dunder", "{{ '{0.__class__.__mro__}'.format('') }}", False),
    ("range_huge", "{% for i in range(10**12) %}{% endfor %}", True),
    ("string_multiplication_bomb", "{{ 'A' * 10**10 }}", True),
    ("list_multiplication_bomb", "{{ ([0] * 10**10)|length }}", True),
    (
        "concat_doubling",
        "{% set ns = namespace(s='x') %}{% for i in range(60) %}{% set ns.s = ns.s ~ ns.s %}"
        "{% endfor %}{{ ns.s|length }}",
        True,
    ),
    (
        "plus_doubling",
        "{% set ns = namespace(s='x') %}{% for i in range(60) %}{% set ns.s = ns.s + ns.s %}"
        "{% endfor %}{{ ns.s|length }}",
        True,
    ),
    ("power_bomb", "{{ 10 ** (10 ** 10) }}", True),
    ("recursive_macro", "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}", False),
    ("macro_doubling", "{% macro f(s) %}{{ f(s ~ s) }}{% endmacro %}{{ f('x') }}", True),
    ("nested_loops_time", "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}", True),
    ("output_size_bomb", "{% for i in range(100000) %}{{ 'x' * 1000000 }}{% endfor %}", True),
    ("center_filter", "{{ 'x'|center(10**10) }}", True),
    ("ljust_method", "{{ 'x'.ljust(10**10) }}", True),
    ("percent_width", "{{ '%0999999999d' % 1 }}", True),
    ("format_width", "{{ '{:>9999999999}'.format(1) }}", True),
    ("format_filter_width", "{{ '%09999999999d'|format(1) }}", True),
    ("replace_growth", "{{ ('x' * 100000).replace('x', 'y' * 100000) }}", True),
    ("join_growth", "{{ (['x' * 100000] * 100000)|join }}", True),
    ("indent_growth", "{{ ('\\n' * 100000)|indent(100000) }}", True),
    ("batch_fill", "{{ [1]|batch(10**10, 0)|list|length }}", True),
    ("lipsum_bomb", "{{ lipsum(10**8) }}", True),
    ("deep_nesting_parser", "{{ " + "(" * 20000 + "1" + ")" * 20000 + " }}", False),
]

HARMLESS = [  # not attacks that can be refused: they render nothing, and never anything secret
    ("config", "{{ config }}"),
    ("request", "{{ request }}"),
    ("cycler_repr", "{{ cycler }}{{ joiner }}{{ namespace }}"),
]


def _environment(**limits: Any) -> BoundedSandboxedEnvironment:
    """A bounded environment with the globals and filters chat templates get (as templates.py sets them up)."""
    env = BoundedSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[templates._Generation, jinja2.ext.loopcontrols], **limits
    )
    env.filters["tojson"] = templates._tojson
    env.globals.update(
        raise_exception=templates._raise_exception,
        strftime_now=templates._strftime_now,
        dict=templates._Dict(),
        namespace=templates._Namespace,
    )
    return env


ENV = _environment(render_seconds=2.0)


@pytest.fixture(autouse=True)
def _shared_limits_kept(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A test that shortens the time limit of the environments every convert shares must put it back."""
    yield
    monkeypatch.undo()
    for track_generation in (False, True):
        assert templates._environment(track_generation).render_seconds == RENDER_SECONDS


def _shorter_limit(monkeypatch: pytest.MonkeyPatch, seconds: float) -> None:
    """Shorten the time limit of the environments every render shares (with and without generation tracking)."""
    for track_generation in (False, True):
        monkeypatch.setattr(templates._environment(track_generation), "render_seconds", seconds)


@pytest.fixture(autouse=True)
def _secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DSPREP_SECRET", SECRET)


def _assert_refused(call: Any, name: str) -> None:
    start = time.monotonic()
    with pytest.raises(TemplateError) as info:
        call()
    message = str(info.value)
    assert message.startswith(f"template {name}: "), message
    assert SECRET not in message and "root:" not in message
    assert "\n" not in message.strip() or message.count("\n") <= 3  # one line (jinja adds "line N" to syntax errors)
    assert time.monotonic() - start < 15


@pytest.mark.parametrize(("name", "text", "bomb"), PAYLOADS, ids=[p[0] for p in PAYLOADS])
def test_sandbox_refuses_payload(name: str, text: str, bomb: bool) -> None:
    _assert_refused(lambda: render_bounded(text, name, environment=ENV, messages=MESSAGES), name)


@pytest.mark.parametrize(("name", "text", "bomb"), PAYLOADS, ids=[p[0] for p in PAYLOADS])
def test_templates_render_refuses_payload(monkeypatch: pytest.MonkeyPatch, name: str, text: str, bomb: bool) -> None:
    _shorter_limit(monkeypatch, 2.0)
    template = templates.ChatTemplate(name, text, "test")
    _assert_refused(lambda: templates.render(template, MESSAGES), name)


@pytest.mark.parametrize(("name", "text", "bomb"), PAYLOADS, ids=[p[0] for p in PAYLOADS])
def test_tokenizer_template_refuses_payload(monkeypatch: pytest.MonkeyPatch, name: str, text: str, bomb: bool) -> None:
    """A tokenizer's own chat_template takes the same path (`load_template('tokenizer', text)`)."""
    _shorter_limit(monkeypatch, 2.0)
    # refused when loaded (a syntax error) or when rendered
    _assert_refused(lambda: templates.render(templates.load_template("tokenizer", text), MESSAGES), "tokenizer")


def test_convert_renders_with_the_bounded_sandbox() -> None:
    assert isinstance(templates._environment(), BoundedSandboxedEnvironment)


@pytest.mark.parametrize(("name", "text"), HARMLESS, ids=[h[0] for h in HARMLESS])
def test_undefined_names_render_nothing_secret(name: str, text: str) -> None:
    out = render_bounded(text, name, environment=ENV, messages=MESSAGES)
    assert SECRET not in out and "root:" not in out and len(out) < 200


def test_at_least_25_payloads() -> None:
    assert len(PAYLOADS) >= 25
    assert len({p[0] for p in PAYLOADS}) == len(PAYLOADS)


CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def test_benign_template_renders_through_the_sandbox() -> None:
    out = render_bounded(CHATML, "chatml", environment=ENV, messages=MESSAGES, add_generation_prompt=True)
    assert out == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\nhello<|im_end|>\n<|im_start|>assistant\n"


def test_benign_features_still_work() -> None:
    text = (
        "{% set ns = namespace(n=0) %}{% for m in messages %}{% set ns.n = ns.n + 1 %}{% endfor %}{{ ns.n }}|"
        "{{ messages|tojson }}|{{ range(3)|list }}|{{ 'ab' * 3 }}|{{ '%s-%d' % ('x', 2) }}|{{ '{}!'.format('y') }}|"
        "{{ 'a' ~ 'b' }}|{{ ['x', 'y']|join(',') }}|{{ 'x'|center(5) }}|{{ 2 ** 10 }}|{{ 'a\\nb'|indent(2) }}|"
        "{% macro m(x) %}<{{ x }}>{% endmacro %}{{ m(1) }}|{{ messages[0].content|upper }}|{{ dict(a=1)|length }}"
    )
    out = render_bounded(text, "benign", environment=ENV, messages=MESSAGES)
    assert out == (
        '2|[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]|[0, 1, 2]|ababab|x-2|y!|'
        "ab|x,y|  x  |1024|a\n  b|<1>|HI|1"
    )


@pytest.mark.parametrize("name", templates.shipped_template_names())
def test_every_shipped_template_renders_the_same_bounded(name: str) -> None:
    """The bounded environment is a drop-in: each shipped template renders exactly as the plain sandbox does."""
    template = templates.load_template(name)
    conversation = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Bye"},
    ]
    special = {"bos_token": "<s>", "eos_token": "</s>"}
    try:
        expected = templates.render(template, conversation, add_generation_prompt=True, special_tokens=special)
    except TemplateError:
        pytest.skip(f"{name} does not render this conversation")
    got = render_bounded(
        template.text, name, environment=_environment(), messages=conversation, tools=None, documents=None,
        add_generation_prompt=True, **special,
    )  # fmt: skip
    assert got == expected


def test_source_date_epoch_pins_the_date_a_template_prints(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "86400")
    assert render_bounded("{{ strftime_now('%d %b %Y') }}", "dated", environment=_environment()) == "02 Jan 1970"


def test_time_limit_interrupts_a_loop_that_calls_nothing() -> None:
    env = _environment(render_seconds=0.3)
    text = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
    start = time.monotonic()
    with pytest.raises(TemplateError, match=r"template slow: rendering took longer than 0\.3 s"):
        render_bounded(text, "slow", environment=env)
    assert time.monotonic() - start < 3
    assert render_bounded("{{ 1 }}", "after", environment=env) == "1"  # the watchdog left nothing pending


def test_time_limit_holds_when_the_render_swallows_its_deadline() -> None:
    """Python drops an exception raised in a garbage-collector callback or a ``__del__`` method: the deadline is
    raised again until the render stops, and none is left pending for the code that runs after it."""
    swallowed = 0

    def swallow(seconds: float) -> str:
        nonlocal swallowed
        until = time.monotonic() + seconds
        try:
            while time.monotonic() < until:
                pass
        except _Deadline:
            swallowed += 1
        return ""

    env = _environment(render_seconds=0.3)
    env.globals["swallow"] = swallow
    # after the swallow, a loop of some seconds (it would finish, unbounded) that the second raise interrupts
    text = "{{ swallow(0.6) }}{% for i in range(20000) %}{% for j in range(3000) %}{% endfor %}{% endfor %}done"
    start = time.monotonic()
    with pytest.raises(TemplateError, match=r"rendering took longer than 0\.3 s"):
        render_bounded(text, "swallows", environment=env)
    assert swallowed == 1
    assert time.monotonic() - start < 0.3 + _WATCHDOG.REFIRE + _WATCHDOG.TICK + 1
    # a render that swallows its deadline and then ends in time leaves no raise pending
    assert render_bounded("{{ swallow(0.6) }}ok", "ends", environment=env) == "ok"
    assert swallowed == 2
    for _ in range(200_000):  # bytecode checks, where a pending raise would land
        pass
    assert render_bounded("{{ 1 }}", "after", environment=env) == "1"


def test_a_deadline_due_as_its_limit_starts_or_ends_leaves_nothing_behind() -> None:
    """Renders whose deadline falls due while their limit is being entered or ended (a limit of 20 µs, threads
    switched as often as Python allows): each ends with its text or a time-out, none leaves its limit registered, and
    no raise lands in the code that runs after them."""
    env = _environment(render_seconds=2e-5)
    template = env.from_string("{% for i in range(50) %}{{ i }}{% endfor %}")
    me = threading.get_ident()
    outcomes: Counter[str] = Counter()
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        start = time.monotonic()
        while time.monotonic() - start < 2:
            try:
                template.render()
                outcomes["rendered"] += 1
            except RenderTimeoutError:
                outcomes["timed out"] += 1
            assert _WATCHDOG._deadlines.get(me) is None, outcomes
    finally:
        sys.setswitchinterval(interval)
    assert outcomes["rendered"] and outcomes["timed out"], outcomes
    until = time.monotonic() + 2 * _WATCHDOG.REFIRE
    while time.monotonic() < until:  # bytecode checks, where a raise would land
        pass


def test_time_limit_holds_between_frequent_renders() -> None:
    """Renders that come often do not wake the watchdog one by one, yet a slow one is still stopped on time, also
    with a limit longer than the watchdog's tick (a deadline it does not hear about when the render starts)."""
    env = _environment(render_seconds=1.5)
    wakes = 0
    wake = _WATCHDOG._wake
    notify = wake.notify

    def counting_notify(n: int = 1) -> None:
        nonlocal wakes
        wakes += 1
        notify(n)

    wake.notify = counting_notify  # type: ignore[method-assign]
    try:
        for i in range(500):
            assert render_bounded("{{ n }}", "quick", environment=env, n=i) == str(i)
    finally:
        del wake.notify
    assert wakes <= 3, f"the watchdog was woken {wakes} times for 500 renders"
    text = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
    start = time.monotonic()
    with pytest.raises(TemplateError, match=r"rendering took longer than 1\.5 s"):
        render_bounded(text, "slow", environment=env)
    assert 1.4 < time.monotonic() - start < 1.5 + _WATCHDOG.TICK + 1


def test_output_limit() -> None:
    env = _environment(max_output=1000)
    with pytest.raises(TemplateError, match="longer than 1000 characters"):
        render_bounded("{% for i in range(100) %}{{ 'x' * 100 }}{% endfor %}", "big", environment=env)
    assert len(render_bounded("{{ 'x' * 1000 }}", "fits", environment=env)) == 1000


def test_generate_is_bounded_too() -> None:
    env = _environment(max_output=50)
    template = env.from_string("{% for i in range(10) %}{{ 'x' * 10 }}{% endfor %}")
    with pytest.raises(jinja2.exceptions.TemplateError, match="longer than 50"):
        list(template.generate())


def test_non_jinja_exceptions_become_template_errors() -> None:
    with pytest.raises(TemplateError, match=r"template typo: TypeError"):
        render_bounded("{{ 1 + 'a' }}", "typo", environment=ENV)


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param("{{ cycler.__init__.__globals__.os.environ['DSPREP_SECRET'] }}", id="globals"),
        pytest.param("{% for i in range(10**12) %}{% endfor %}", id="range"),
    ],
)
def test_hostile_tokenizer_template_stops_a_convert_with_exit_7(tmp_path: Path, payload: str) -> None:
    """A tokenizer folder whose tokenizer_config.json carries a hostile chat_template: one line, exit 7, no output."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from dsprep.cli import main

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{c: i + 3 for i, c in enumerate("abcdefghijklmnopqrstuvwxyz ")}}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    tok = PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    tok.chat_template = payload + "{% for m in messages %}{{ m.content }}{% endfor %}"
    folder = tmp_path / "tok"
    tok.save_pretrained(str(folder))
    saved = [p.read_text() for p in folder.iterdir() if p.name in ("tokenizer_config.json", "chat_template.jinja")]
    assert any(payload in text for text in saved)
    data = tmp_path / "in.jsonl"
    data.write_text(json.dumps({"messages": MESSAGES}) + "\n")
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["convert", str(data), "--out", str(out), "--tokenizer", str(folder), "-q"])
    assert result.exit_code == 7, result.output
    assert result.output.startswith("error: template tokenizer") and result.output.count("\n") == 1
    assert SECRET not in result.output
    assert not (out / "manifest.json").exists()


def test_a_template_that_hangs_stops_a_convert_at_its_first_time_out(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The probe renders (shape, skeleton, conformance) give up on the first render that runs out of time, instead of
    each waiting out the limit in turn: one time-out, exit 7, one line."""
    from dsprep.cli import main
    from dsprep.errors import TemplateTimeoutError

    make_error = templates._render_error
    _shorter_limit(monkeypatch, 0.5)

    timeouts: list[TemplateError] = []

    def counted(template: templates.ChatTemplate, exc: jinja2.exceptions.TemplateError) -> TemplateError:
        error = make_error(template, exc)
        if isinstance(error, TemplateTimeoutError):
            timeouts.append(error)
        return error

    monkeypatch.setattr(templates, "_render_error", counted)
    templates._compile.cache_clear()
    loop = tmp_path / "loop.jinja"
    loop.write_text("{% for i in range(99999) %}{% for j in range(99999) %}{% endfor %}{% endfor %}"
                    "{% for m in messages %}{{ m.content }}{% endfor %}")  # fmt: skip
    data = tmp_path / "in.jsonl"
    data.write_text(json.dumps({"messages": MESSAGES}) + "\n")
    try:
        result = CliRunner().invoke(
            main, ["convert", str(data), "-o", str(tmp_path / "o"), "-t", "mistral:tekken", "--template", str(loop),
                   "-j", "1", "-q", "--no-cache"],
        )  # fmt: skip
    finally:
        templates._compile.cache_clear()
    assert result.exit_code == 7, result.output
    assert result.output == "error: template loop: rendering took longer than 0.5 s\n"
    assert len(timeouts) == 1


def test_a_row_whose_render_runs_out_of_time_stops_the_convert(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A time-out depends on the machine's load, not on the row: it stops the run (exit 7) rather than rejecting the
    row, so that the same inputs never give different outputs on a busy machine."""
    from dsprep.cli import main

    _shorter_limit(monkeypatch, 0.5)
    templates._compile.cache_clear()
    slow = tmp_path / "slow.jinja"
    slow.write_text("{% for m in messages %}{% if m.content == 'SLOW' %}{% for i in range(99999) %}"
                    "{% for j in range(99999) %}{% endfor %}{% endfor %}{% endif %}<|im_start|>{{ m.role }}\n"
                    "{% generation %}{{ m.content }}{% endgeneration %}<|im_end|>\n{% endfor %}")  # fmt: skip
    rows = [MESSAGES, [MESSAGES[0], {"role": "assistant", "content": "SLOW"}], MESSAGES]
    data = tmp_path / "in.jsonl"
    data.write_text("".join(json.dumps({"messages": m}) + "\n" for m in rows))
    try:
        result = CliRunner().invoke(
            main, ["convert", str(data), "-o", str(tmp_path / "o"), "-t", "mistral:tekken", "--template", str(slow),
                   "-j", "1", "-q", "--no-cache", "--allow-template-warnings"],
        )  # fmt: skip
    finally:
        templates._compile.cache_clear()
    assert result.exit_code == 7, result.output
    assert result.output == "error: template slow: rendering took longer than 0.5 s\n"
    assert not (tmp_path / "o" / "manifest.json").exists()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{% for m in messages %}\n{{ m.content }\n{% endfor %}", "{path}:2: template syntax error: unexpected '}'"),
        ("{% if messages %}{{ messages[0].content }}", "{path}:1: template syntax error: Unexpected end of template."),
        ("  \n", "{path}:1: the template is empty"),
    ],
)
def test_a_template_file_that_is_not_a_template_names_its_line(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "mine.jinja"
    path.write_text(text)
    with pytest.raises(TemplateError) as caught:
        templates.load_template(str(path))
    assert str(caught.value).startswith(message.replace("{path}", str(path)))
