"""The one canonical Arrow schema every input format normalizes to, and the rejects schema.

A normalized row has a ``kind`` and fills the columns that kind uses; the others are null.

========================  =======================================================================================
kind                      columns used
========================  =======================================================================================
``conversation``          ``messages`` (the whole conversation), ``tools``
``text``                  ``text`` (everything trained)
``prompt_completion``     plain form: ``prompt`` + ``completion`` strings; conversational form: ``messages`` (the
                          prompt turns) + ``completion_messages``; only the completion is trained
``preference``            plain form: ``prompt`` + ``chosen`` + ``rejected`` strings; conversational form:
                          ``messages`` (shared prompt turns) + ``chosen_messages`` + ``rejected_messages``
``kto``                   as ``prompt_completion``, plus the boolean ``label`` (desirable or not)
========================  =======================================================================================

Every row also carries provenance: ``source_file``, ``source_row`` (0-based line for line-oriented files, 0-based
record index otherwise), a stable ``id``, and ``extra``: every input field the format did not map, as JSON text.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

__all__ = [
    "KINDS",
    "MESSAGE",
    "NORMALIZED",
    "NORMALIZED_COLUMNS",
    "PACKED",
    "REJECT_FIELDS",
    "ROLES",
    "SCHEMA_VERSION",
    "TOKENIZED",
    "TOKENIZED_COLUMNS",
    "TOOL_CALL",
    "int32_array",
]

SCHEMA_VERSION = 1

KINDS = ("conversation", "text", "prompt_completion", "preference", "kto")
ROLES = ("system", "user", "assistant", "tool")

TOOL_CALL = pa.struct(
    [
        pa.field("id", pa.string()),
        pa.field("name", pa.string(), nullable=False),
        pa.field("arguments", pa.string(), nullable=False),  # JSON text of an object
    ]
)

MESSAGE = pa.struct(
    [
        pa.field("role", pa.string(), nullable=False),  # one of ROLES
        pa.field("content", pa.string()),  # null when absent (an assistant turn holding only tool calls)
        pa.field("name", pa.string()),
        pa.field("tool_calls", pa.list_(TOOL_CALL)),
        pa.field("tool_call_id", pa.string()),
        pa.field("reasoning", pa.string()),  # chain of thought, rendered by thinking templates
        pa.field("train", pa.bool_()),  # per-message override of the loss mask; null = the run's policy
        pa.field("weight", pa.float64()),  # per-message loss weight from the data; null = none given
        pa.field("extra", pa.string()),  # unmapped message keys, JSON text
    ]
)

MESSAGES = pa.list_(MESSAGE)

NORMALIZED = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("kind", pa.string(), nullable=False),
        pa.field("messages", MESSAGES),
        pa.field("completion_messages", MESSAGES),
        pa.field("chosen_messages", MESSAGES),
        pa.field("rejected_messages", MESSAGES),
        pa.field("text", pa.string()),
        pa.field("prompt", pa.string()),
        pa.field("completion", pa.string()),
        pa.field("chosen", pa.string()),
        pa.field("rejected", pa.string()),
        pa.field("label", pa.bool_()),
        pa.field("tools", pa.string()),  # JSON text: a list of {"type": "function", "function": {...}}
        pa.field("source_file", pa.string(), nullable=False),
        pa.field("source_row", pa.int64(), nullable=False),
        pa.field("extra", pa.string()),  # unmapped input fields, JSON text
    ],
    metadata={"dsprep.schema_version": str(SCHEMA_VERSION)},
)
NORMALIZED_COLUMNS = tuple(NORMALIZED.names)  # the names as a tuple: pyarrow builds `.names` anew on each access

TOKENS = pa.list_(pa.int32())


def int32_array(values: np.ndarray) -> pa.Array:
    """An int32 Arrow array of `values`, over their memory where they are contiguous int32 already. (`pa.array` does the
    same, but its first conversion in a process imports pandas: 0.2 s of CPU that no shard needs.)"""
    values = np.ascontiguousarray(values, np.int32)
    return pa.Array.from_buffers(pa.int32(), len(values), [None, pa.py_buffer(values)])


# Tokenized rows (`dsprep convert --tokenizer`). Conversation, text and prompt-completion rows fill `input_ids` and
# `labels` (-100 where not trained); preference rows fill `prompt_input_ids`, `chosen_input_ids`,
# `rejected_input_ids` (the continuations are the exact token suffix of the full rendering); KTO rows fill
# `prompt_input_ids`, `completion_input_ids` and `label`.
TOKENIZED = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("kind", pa.string(), nullable=False),
        pa.field("input_ids", TOKENS),
        pa.field("labels", TOKENS),
        pa.field("prompt_input_ids", TOKENS),
        pa.field("chosen_input_ids", TOKENS),
        pa.field("rejected_input_ids", TOKENS),
        pa.field("completion_input_ids", TOKENS),
        pa.field("label", pa.bool_()),
        pa.field("num_tokens", pa.int32(), nullable=False),
        pa.field("num_trained", pa.int32(), nullable=False),
        pa.field("source_file", pa.string(), nullable=False),
        pa.field("source_row", pa.int64(), nullable=False),
    ],
    metadata={"dsprep.schema_version": str(SCHEMA_VERSION)},
)
TOKENIZED_COLUMNS = tuple(TOKENIZED.names)

# Packed rows (`dsprep convert --pack L`): examples concatenated into rows of at most L tokens, not padded.
# `position_ids` restart at 0 for each example, `seq_lens` are the examples' lengths in order, and each example's
# first label is -100 so no label crosses an example boundary. `example_ids` are the packed examples' `id`s.
PACKED = pa.schema(
    [
        pa.field("input_ids", TOKENS, nullable=False),
        pa.field("labels", TOKENS, nullable=False),
        pa.field("position_ids", TOKENS, nullable=False),
        pa.field("seq_lens", TOKENS, nullable=False),
        pa.field("example_ids", pa.list_(pa.string()), nullable=False),
        pa.field("num_tokens", pa.int32(), nullable=False),
    ],
    metadata={"dsprep.schema_version": str(SCHEMA_VERSION)},
)

# One line of rejects.jsonl: where, which field, why (a reason code), a human message and the raw input.
REJECT_FIELDS = ("source_file", "source_row", "location", "field", "reason", "message", "raw")
