"""Template conformance checks, run once per (tokenizer, template) before a convert and recorded in the manifest.

- ``eot_trained``: every assistant turn ends with trained end-of-turn tokens that are more than whitespace (the text
  the template writes after the content), so the model learns to stop; also reports whether the marker holds a
  special token (with a vocabulary where ``<|im_end|>`` is plain text, ChatML's marker is several ordinary tokens).
- ``single_bos``: the rendered conversation does not start with BOS twice.
- ``generation_prompt_matches``: the generation prompt equals the header the template writes before an assistant
  turn in history (else masks come from the slower prefix method).
- ``prefix_stable``: rendering a conversation's prefixes gives prefixes of the full rendering (false for templates
  that move the system prompt or tools to the last turn, or drop earlier thinking).

`eot_trained` and `single_bos` failing stop the run unless ``--allow-template-warnings``. `conformance_for` keeps the
results beside a built-in tokenizer taken from its stored facts, so such a run never loads the Hugging Face tokenizer.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import Any

from dsprep.encode import PROBE_ANSWER, PROBE_USER, EncodeOptions, Encoder
from dsprep.errors import RowError, TemplateError, TemplateTimeoutError

__all__ = ["Conformance", "check_conformance", "conformance_for"]

SYSTEM = "dsprep probe system 7f3a"
FOLLOW_UP = "dsprep probe follow-up 7f3a"
SECOND = "dsprep probe second answer 7f3a"


@dataclass(frozen=True)
class Conformance:
    """The results of the checks, and the problems that make a run stop."""

    eot_trained: bool
    eot_tokens: list[str]
    eot_text: str
    eot_is_special: bool
    single_bos: bool
    generation_prompt_matches: bool
    prefix_stable: bool
    problems: list[str]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def conformance_for(encoder: Encoder) -> Conformance:
    """`check_conformance`, kept beside a tokenizer taken from its stored facts (`LoadedTokenizer.stored`) per template
    and dsprep version; checked afresh for every other tokenizer."""
    from dsprep.tokenizers import read_beside, write_beside
    from dsprep.version import __version__

    loaded = encoder.tok
    if loaded.stored is None:
        return check_conformance(encoder)
    what = {"fingerprint": loaded.fingerprint, "template": encoder.template.sha256, "dsprep": __version__,
            "train_on": encoder.options.train_on}  # fmt: skip
    name = f"conformance-{hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:32]}.json"
    kept = read_beside(loaded.folder, name)
    if isinstance(kept, dict):
        try:
            return Conformance(**kept)
        except TypeError:
            pass
    result = check_conformance(encoder)
    write_beside(loaded.folder, name, result.to_dict())
    return result


def _message(role: str, content: str) -> dict[str, Any]:
    return {"role": role, "content": content, "name": None, "tool_calls": None, "tool_call_id": None,
            "reasoning": None, "train": None, "weight": None, "extra": None}  # fmt: skip


def _row(messages: list[dict[str, Any]]) -> dict[str, Any]:
    return {"id": "probe", "kind": "conversation", "messages": messages, "tools": None, "source_file": "probe",
            "source_row": 0}  # fmt: skip


def check_conformance(encoder: Encoder) -> Conformance:
    """Run the checks on probe conversations through the convert's tokenizer and template.

    The probes are encoded with every assistant turn trained and no length limit, whatever the run's options: the
    checks are about the template (a run's `--max-len` may be shorter than a probe, and `--train-on last` leaves
    earlier turns untrained on purpose). A template that renders an earlier turn differently once later turns follow
    (qwen3 drops earlier reasoning) cannot train every turn, but serves a run with ``--train-on last`` or ``all``:
    then its probe is one turn, trained as the run trains it.
    """
    train_on = encoder.options.train_on
    encoder = Encoder(encoder.tok, encoder.template, EncodeOptions())
    tok = encoder.tok.tokenizer
    name = encoder.template.name
    with_system = [
        _message("system", SYSTEM), _message("user", PROBE_USER), _message("assistant", PROBE_ANSWER),
        _message("user", FOLLOW_UP), _message("assistant", SECOND),
    ]  # fmt: skip
    probe = with_system[1:]
    problems: list[str] = []
    result = _encode_probe(encoder, probe)
    if isinstance(result, RowError) and result.reason == "template_not_prefix_stable" and train_on != "assistant":
        encoder, probe = Encoder(encoder.tok, encoder.template, EncodeOptions(train_on=train_on)), probe[:2]
        result = _encode_probe(encoder, probe)
    if isinstance(result, RowError):
        raise TemplateError(f"template {name} cannot encode a plain two-turn conversation: {result}")
    ids, labels = result[0]["input_ids"], result[0]["labels"]
    eot_tokens, eot_trained, eot_special = _eot(encoder, probe, labels)
    if not eot_trained:
        problems.append(f"template {name}: assistant turns end with no trained end-of-turn marker; "
                        "the model would not learn to stop")  # fmt: skip
    bos = tok.bos_token_id
    single_bos = not (bos is not None and len(ids) > 1 and ids[0] == bos and ids[1] == bos)
    if not single_bos:
        problems.append(f"template {name}: the rendered conversation starts with BOS twice (template and tokenizer)")
    return Conformance(
        eot_trained=eot_trained,
        eot_tokens=eot_tokens,
        eot_text=tok.convert_tokens_to_string(eot_tokens) if eot_tokens else "",
        eot_is_special=eot_special,
        single_bos=single_bos,
        generation_prompt_matches=encoder.shape is not None,
        prefix_stable=_prefix_stable(encoder, with_system),
        problems=problems,
    )


def _encode_probe(encoder: Encoder, messages: list[dict[str, Any]]) -> Any:
    """The probe conversation's encoding (a list of rows), or the RowError its encoding gave."""
    try:
        [result] = encoder.encode([_row(messages)])
    except TemplateError as exc:
        name = encoder.template.name
        raise TemplateError(f"template {name} cannot render a plain two-turn conversation: {exc}") from None
    return result


def _eot(encoder: Encoder, messages: list[dict[str, Any]], labels: Any) -> tuple[list[str], bool, bool]:
    """The trained tokens right after each assistant answer (its end-of-turn marker); whether every turn has them."""
    from dsprep.templates import template_messages

    tok = encoder.tok.tokenizer
    special = set(tok.all_special_ids) | set(getattr(tok, "added_tokens_decoder", {}) or {})
    text = encoder.render(template_messages(messages), None)
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = enc["input_ids"], enc["offset_mapping"]
    markers: list[list[int]] = []
    for answer in (m["content"] for m in messages if m["role"] == "assistant"):
        end = text.find(answer) + len(answer)
        after = [i for i, (start, _) in enumerate(offsets) if start >= end]
        run = []
        for i in after:
            if labels[i] == -100:
                break
            run.append(i)
        markers.append(run)
    # a turn must end in a visible trained marker (special token, EOS, or marker text), not just whitespace
    eot_trained = all(m and tok.decode([ids[i] for i in m], skip_special_tokens=False).strip() for m in markers)
    tokens = [tok.convert_ids_to_tokens(ids[i]) for i in markers[0]]
    is_special = any(ids[i] in special for i in markers[0])
    return tokens, eot_trained, is_special


def _prefix_stable(encoder: Encoder, messages: list[dict[str, Any]]) -> bool:
    from dsprep.templates import template_messages

    tmsgs = template_messages(messages)
    try:
        full = encoder.render(tmsgs, None)
        for i in range(1, len(tmsgs)):
            if not full.startswith(encoder.render(tmsgs[:i], None)):
                return False
            if tmsgs[i]["role"] == "assistant" and not full.startswith(
                encoder.render(tmsgs[:i], None, generation_prompt=True)
            ):
                return False
    except TemplateTimeoutError:
        raise
    except TemplateError:
        return False
    return True
