"""Shipped chat templates: golden renders for every family, generation prompts that prefix the conversation,
``{% generation %}`` spans, and parity with `transformers`' ``apply_chat_template``.

The golden strings were written from each family's published layout (the model's own ``chat_template``, or
mistral-common, FastChat and Stanford Alpaca where those define the format) and checked against renders of the
published templates; where a shipped template deliberately differs from the published one, the comment by its
goldens says how.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import pytest

from dsprep.errors import TemplateError
from dsprep.templates import (
    ChatTemplate,
    load_template,
    render,
    render_generation_spans,
    shipped_template_names,
    template_messages,
)

TEMPLATES = (
    "alpaca", "chatml", "command_r", "deepseek_v3", "gemma2", "gemma3", "granite", "llama2", "llama3", "llama4",
    "mistral_tekken", "mistral_v1", "mistral_v3", "mistral_v7", "olmo", "phi3", "phi4", "qwen2_5", "qwen3", "smollm",
    "vicuna", "zephyr",
)  # fmt: skip

# Each family's own BOS/EOS strings (None: the tokenizer has no BOS token).
SPECIAL_TOKENS: dict[str, tuple[str | None, str]] = {
    "alpaca": ("<s>", "</s>"),
    "chatml": (None, "<|im_end|>"),
    "command_r": ("<BOS_TOKEN>", "<|END_OF_TURN_TOKEN|>"),
    "deepseek_v3": ("<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"),
    "gemma2": ("<bos>", "<eos>"),
    "gemma3": ("<bos>", "<eos>"),
    "granite": ("<|end_of_text|>", "<|end_of_text|>"),
    "llama2": ("<s>", "</s>"),
    "llama3": ("<|begin_of_text|>", "<|eot_id|>"),
    "llama4": ("<|begin_of_text|>", "<|eot|>"),
    "mistral_tekken": ("<s>", "</s>"),
    "mistral_v1": ("<s>", "</s>"),
    "mistral_v3": ("<s>", "</s>"),
    "mistral_v7": ("<s>", "</s>"),
    "olmo": ("<|endoftext|>", "<|endoftext|>"),
    "phi3": ("<s>", "<|endoftext|>"),
    "phi4": ("<|endoftext|>", "<|im_end|>"),
    "qwen2_5": (None, "<|im_end|>"),
    "qwen3": (None, "<|im_end|>"),
    "smollm": ("<|im_start|>", "<|im_end|>"),
    "vicuna": ("<s>", "</s>"),
    "zephyr": ("<s>", "</s>"),
}


def special(name: str) -> dict[str, Any]:
    bos, eos = SPECIAL_TOKENS[name]
    return {"eos_token": eos} if bos is None else {"bos_token": bos, "eos_token": eos}


TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Get the current weather for a city.",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        },
    }
]
# The tool schema as templates print it: on one line (tojson), and indented by four (tojson(indent=4)).
TOOL_LINE = (
    '{"type": "function", "function": {"name": "get_weather", "description": "Get the current weather for a city.", '
    '"parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}'
)
TOOL_INDENTED = (
    "{\n"
    '    "type": "function",\n'
    '    "function": {\n'
    '        "name": "get_weather",\n'
    '        "description": "Get the current weather for a city.",\n'
    '        "parameters": {\n'
    '            "type": "object",\n'
    '            "properties": {\n'
    '                "city": {\n'
    '                    "type": "string"\n'
    "                }\n"
    "            },\n"
    '            "required": [\n'
    '                "city"\n'
    "            ]\n"
    "        }\n"
    "    }\n"
    "}"
)


def _canonical(role: str, content: str | None = None, **fields: Any) -> dict[str, Any]:
    return {"role": role, "content": content, **fields}


# Canonical rows, turned into template messages the way the encoder does it (`template_messages`).
CONVERSATIONS: dict[str, list[dict[str, Any]]] = {
    "system": template_messages([
        _canonical("system", "You are terse."),
        _canonical("user", "Hi!"),
        _canonical("assistant", "Hello."),
        _canonical("user", "What is 2+2?"),
        _canonical("assistant", "4"),
    ]),
    "no_system": template_messages([
        _canonical("user", "Hi!"),
        _canonical("assistant", "Hello."),
        _canonical("user", "What is 2+2?"),
        _canonical("assistant", "4"),
    ]),
    "tools": template_messages([
        _canonical("system", "You are terse."),
        _canonical("user", "Weather in Paris?"),
        _canonical("assistant", tool_calls=[{"id": "call12345", "name": "get_weather", "arguments": '{"city": "Paris"}'}]),
        _canonical("tool", '{"temperature": 18}', tool_call_id="call12345"),
        _canonical("assistant", "18 degrees."),
    ]),
    "reasoning": template_messages([
        _canonical("user", "What is 2+2?"),
        _canonical("assistant", "4", reasoning="Add them."),
        _canonical("user", "And 3+3?"),
        _canonical("assistant", "6", reasoning="Add again."),
    ]),
}  # fmt: skip
TOOLS_FOR = {"tools": TOOLS}


@dataclass(frozen=True)
class Rejected:
    """The template refuses the conversation with a `TemplateError` whose message contains `match`."""

    match: str


# Goldens. Deliberate differences from the published templates, so a reader can tell them from mistakes:
# - llama3/llama4 reproduce Meta's quirk of JSON-encoding string tool results ("{\"temperature\": 18}").
# - phi3 omits the EOS Phi-3's template appends after the last message when no generation prompt is asked for
#   (it would make every earlier turn's rendering differ from the conversation's).
# - mistral_v3 (shipped earlier) leaves out the tool call ids mistral-common writes; mistral_v7 and
#   mistral_tekken write them.
# - granite renders OpenAI-style tool calls/results the way Granite 3.0's assistant_tool_call/tool_response roles do.
# - Families without tool support reject tools, tool calls and tool results rather than drop them; families without
#   reasoning (all but qwen3) ignore `reasoning_content`, as their published templates do.
GOLDEN: dict[tuple[str, str], str | Rejected] = {
    ("alpaca", "system"): (
        "<s>You are terse.\n"
        "\n"
        "### Instruction:\n"
        "Hi!\n"
        "\n"
        "### Response:\n"
        "Hello.</s>\n"
        "\n"
        "### Instruction:\n"
        "What is 2+2?\n"
        "\n"
        "### Response:\n"
        "4</s>"
    ),
    ("alpaca", "no_system"): (
        "<s>Below is an instruction that describes a task. Write a response that appropriately completes the request.\n"
        "\n"
        "### Instruction:\n"
        "Hi!\n"
        "\n"
        "### Response:\n"
        "Hello.</s>\n"
        "\n"
        "### Instruction:\n"
        "What is 2+2?\n"
        "\n"
        "### Response:\n"
        "4</s>"
    ),
    ("alpaca", "tools"): Rejected("no tool support"),
    ("alpaca", "reasoning"): (
        "<s>Below is an instruction that describes a task. Write a response that appropriately completes the request.\n"
        "\n"
        "### Instruction:\n"
        "What is 2+2?\n"
        "\n"
        "### Response:\n"
        "4</s>\n"
        "\n"
        "### Instruction:\n"
        "And 3+3?\n"
        "\n"
        "### Response:\n"
        "6</s>"
    ),
    ("chatml", "system"): (
        "<|im_start|>system\n"
        "You are terse.<|im_end|>\n"
        "<|im_start|>user\n"
        "Hi!<|im_end|>\n"
        "<|im_start|>assistant\n"
        "Hello.<|im_end|>\n"
        "<|im_start|>user\n"
        "What is 2+2?<|im_end|>\n"
        "<|im_start|>assistant\n"
        "4<|im_end|>\n"
    ),
    ("chatml", "no_system"): (
        "<|im_start|>user\n"
        "Hi!<|im_end|>\n"
        "<|im_start|>assistant\n"
        "Hello.<|im_end|>\n"
        "<|im_start|>user\n"
        "What is 2+2?<|im_end|>\n"
        "<|im_start|>assistant\n"
        "4<|im_end|>\n"
    ),
    ("chatml", "tools"): (
        "<|im_start|>system\n"
        "You are terse.\n"
        "\n"
        "You may call these tools. Their JSON schemas, one per line, are inside <tools></tools>:\n"
        "<tools>\n" + TOOL_LINE + "\n"
        "</tools>\n"
        'Call a tool by writing <tool_call>{"name": ..., "arguments": ...}</tool_call>.<|im_end|>\n'
        "<|im_start|>user\n"
        "Weather in Paris?<|im_end|>\n"
        "<|im_start|>assistant\n"
        "<tool_call>\n"
        '{"name": "get_weather", "arguments": {"city": "Paris"}}\n'
        "</tool_call><|im_end|>\n"
        "<|im_start|>tool\n"
        "<tool_response>\n"
        '{"temperature": 18}\n'
        "</tool_response><|im_end|>\n"
        "<|im_start|>assistant\n"
        "18 degrees.<|im_end|>\n"
    ),
    ("chatml", "reasoning"): (
        "<|im_start|>user\n"
        "What is 2+2?<|im_end|>\n"
        "<|im_start|>assistant\n"
        "4<|im_end|>\n"
        "<|im_start|>user\n"
        "And 3+3?<|im_end|>\n"
        "<|im_start|>assistant\n"
        "6<|im_end|>\n"
    ),
    ("command_r", "system"): (
        "<BOS_TOKEN>"
        "<|START_OF_TURN_TOKEN|><|SYSTEM_TOKEN|>You are terse.<|END_OF_TURN_TOKEN|>"
        "<|START_OF_TURN_TOKEN|><|USER_TOKEN|>Hi!<|END_OF_TURN_TOKEN|>"
        "<|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>Hello.<|END_OF_TURN_TOKEN|>"
        "<|START_OF_TURN_TOKEN|><|USER_TOKEN|>What is 2+2?<|END_OF_TURN_TOKEN|>"
        "<|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>4<|END_OF_TURN_TOKEN|>"
    ),
    ("command_r", "no_system"): (
        "<BOS_TOKEN>"
        "<|START_OF_TURN_TOKEN|><|USER_TOKEN|>Hi!<|END_OF_TURN_TOKEN|>"
        "<|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>Hello.<|END_OF_TURN_TOKEN|>"
        "<|START_OF_TURN_TOKEN|><|USER_TOKEN|>What is 2+2?<|END_OF_TURN_TOKEN|>"
        "<|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>4<|END_OF_TURN_TOKEN|>"
    ),
    ("command_r", "tools"): Rejected("no tool support"),
    ("command_r", "reasoning"): (
        "<BOS_TOKEN>"
        "<|START_OF_TURN_TOKEN|><|USER_TOKEN|>What is 2+2?<|END_OF_TURN_TOKEN|>"
        "<|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>4<|END_OF_TURN_TOKEN|>"
        "<|START_OF_TURN_TOKEN|><|USER_TOKEN|>And 3+3?<|END_OF_TURN_TOKEN|>"
        "<|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>6<|END_OF_TURN_TOKEN|>"
    ),
    ("deepseek_v3", "system"): (
        "<｜begin▁of▁sentence｜>You are terse."
        "<｜User｜>Hi!"
        "<｜Assistant｜>Hello.<｜end▁of▁sentence｜>"
        "<｜User｜>What is 2+2?"
        "<｜Assistant｜>4<｜end▁of▁sentence｜>"
    ),
    ("deepseek_v3", "no_system"): (
        "<｜begin▁of▁sentence｜>"
        "<｜User｜>Hi!"
        "<｜Assistant｜>Hello.<｜end▁of▁sentence｜>"
        "<｜User｜>What is 2+2?"
        "<｜Assistant｜>4<｜end▁of▁sentence｜>"
    ),
    ("deepseek_v3", "tools"): (
        "<｜begin▁of▁sentence｜>You are terse."
        "<｜User｜>Weather in Paris?"
        "<｜Assistant｜><｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>get_weather\n"
        "```json\n"
        '{"city": "Paris"}\n'
        "```<｜tool▁call▁end｜><｜tool▁calls▁end｜><｜end▁of▁sentence｜>"
        '<｜tool▁outputs▁begin｜><｜tool▁output▁begin｜>{"temperature": 18}<｜tool▁output▁end｜>'
        "<｜tool▁outputs▁end｜>18 degrees.<｜end▁of▁sentence｜>"
    ),
    ("deepseek_v3", "reasoning"): (
        "<｜begin▁of▁sentence｜>"
        "<｜User｜>What is 2+2?"
        "<｜Assistant｜>4<｜end▁of▁sentence｜>"
        "<｜User｜>And 3+3?"
        "<｜Assistant｜>6<｜end▁of▁sentence｜>"
    ),
    ("gemma2", "system"): Rejected("System role not supported"),
    ("gemma2", "no_system"): (
        "<bos><start_of_turn>user\n"
        "Hi!<end_of_turn>\n"
        "<start_of_turn>model\n"
        "Hello.<end_of_turn>\n"
        "<start_of_turn>user\n"
        "What is 2+2?<end_of_turn>\n"
        "<start_of_turn>model\n"
        "4<end_of_turn>\n"
    ),
    ("gemma2", "tools"): Rejected("no tool support"),
    ("gemma2", "reasoning"): (
        "<bos><start_of_turn>user\n"
        "What is 2+2?<end_of_turn>\n"
        "<start_of_turn>model\n"
        "4<end_of_turn>\n"
        "<start_of_turn>user\n"
        "And 3+3?<end_of_turn>\n"
        "<start_of_turn>model\n"
        "6<end_of_turn>\n"
    ),
    ("gemma3", "system"): (
        "<bos><start_of_turn>user\n"
        "You are terse.\n"
        "\n"
        "Hi!<end_of_turn>\n"
        "<start_of_turn>model\n"
        "Hello.<end_of_turn>\n"
        "<start_of_turn>user\n"
        "What is 2+2?<end_of_turn>\n"
        "<start_of_turn>model\n"
        "4<end_of_turn>\n"
    ),
    ("gemma3", "no_system"): (
        "<bos><start_of_turn>user\n"
        "Hi!<end_of_turn>\n"
        "<start_of_turn>model\n"
        "Hello.<end_of_turn>\n"
        "<start_of_turn>user\n"
        "What is 2+2?<end_of_turn>\n"
        "<start_of_turn>model\n"
        "4<end_of_turn>\n"
    ),
    ("gemma3", "tools"): Rejected("no tool support"),
    ("gemma3", "reasoning"): (
        "<bos><start_of_turn>user\n"
        "What is 2+2?<end_of_turn>\n"
        "<start_of_turn>model\n"
        "4<end_of_turn>\n"
        "<start_of_turn>user\n"
        "And 3+3?<end_of_turn>\n"
        "<start_of_turn>model\n"
        "6<end_of_turn>\n"
    ),
    ("granite", "system"): (
        "<|start_of_role|>system<|end_of_role|>You are terse.<|end_of_text|>\n"
        "<|start_of_role|>user<|end_of_role|>Hi!<|end_of_text|>\n"
        "<|start_of_role|>assistant<|end_of_role|>Hello.<|end_of_text|>\n"
        "<|start_of_role|>user<|end_of_role|>What is 2+2?<|end_of_text|>\n"
        "<|start_of_role|>assistant<|end_of_role|>4<|end_of_text|>\n"
    ),
    ("granite", "no_system"): (
        "<|start_of_role|>user<|end_of_role|>Hi!<|end_of_text|>\n"
        "<|start_of_role|>assistant<|end_of_role|>Hello.<|end_of_text|>\n"
        "<|start_of_role|>user<|end_of_role|>What is 2+2?<|end_of_text|>\n"
        "<|start_of_role|>assistant<|end_of_role|>4<|end_of_text|>\n"
    ),
    ("granite", "tools"): (
        "<|start_of_role|>available_tools<|end_of_role|>\n" + TOOL_INDENTED + "<|end_of_text|>\n"
        "<|start_of_role|>system<|end_of_role|>You are terse.<|end_of_text|>\n"
        "<|start_of_role|>user<|end_of_role|>Weather in Paris?<|end_of_text|>\n"
        '<|start_of_role|>assistant<|end_of_role|><|tool_call|>[{"name": "get_weather", "arguments": {"city": "Paris"}}]<|end_of_text|>\n'
        '<|start_of_role|>tool_response<|end_of_role|>{"temperature": 18}<|end_of_text|>\n'
        "<|start_of_role|>assistant<|end_of_role|>18 degrees.<|end_of_text|>\n"
    ),
    ("granite", "reasoning"): (
        "<|start_of_role|>user<|end_of_role|>What is 2+2?<|end_of_text|>\n"
        "<|start_of_role|>assistant<|end_of_role|>4<|end_of_text|>\n"
        "<|start_of_role|>user<|end_of_role|>And 3+3?<|end_of_text|>\n"
        "<|start_of_role|>assistant<|end_of_role|>6<|end_of_text|>\n"
    ),
    ("llama2", "system"): (
        "<s>[INST] <<SYS>>\nYou are terse.\n<</SYS>>\n\nHi! [/INST] Hello. </s><s>[INST] What is 2+2? [/INST] 4 </s>"
    ),
    ("llama2", "no_system"): "<s>[INST] Hi! [/INST] Hello. </s><s>[INST] What is 2+2? [/INST] 4 </s>",
    ("llama2", "tools"): Rejected("no tool support"),
    ("llama2", "reasoning"): "<s>[INST] What is 2+2? [/INST] 4 </s><s>[INST] And 3+3? [/INST] 6 </s>",
    ("llama3", "system"): (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n"
        "\n"
        "Cutting Knowledge Date: December 2023\n"
        "Today Date: 26 Jul 2024\n"
        "\n"
        "You are terse.<|eot_id|><|start_header_id|>user<|end_header_id|>\n"
        "\n"
        "Hi!<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n"
        "\n"
        "Hello.<|eot_id|><|start_header_id|>user<|end_header_id|>\n"
        "\n"
        "What is 2+2?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n"
        "\n"
        "4<|eot_id|>"
    ),
    ("llama3", "no_system"): (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n"
        "\n"
        "Cutting Knowledge Date: December 2023\n"
        "Today Date: 26 Jul 2024\n"
        "\n"
        "<|eot_id|><|start_header_id|>user<|end_header_id|>\n"
        "\n"
        "Hi!<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n"
        "\n"
        "Hello.<|eot_id|><|start_header_id|>user<|end_header_id|>\n"
        "\n"
        "What is 2+2?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n"
        "\n"
        "4<|eot_id|>"
    ),
    ("llama3", "tools"): (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n"
        "\n"
        "Environment: ipython\n"
        "Cutting Knowledge Date: December 2023\n"
        "Today Date: 26 Jul 2024\n"
        "\n"
        "You are terse.<|eot_id|><|start_header_id|>user<|end_header_id|>\n"
        "\n"
        "Given the following functions, please respond with a JSON for a function call with its proper arguments that best answers the given prompt.\n"
        "\n"
        'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.Do not use variables.\n'
        "\n" + TOOL_INDENTED + "\n"
        "\n"
        "Weather in Paris?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n"
        "\n"
        '{"name": "get_weather", "parameters": {"city": "Paris"}}<|eot_id|>'
        "<|start_header_id|>ipython<|end_header_id|>\n"
        "\n"
        '"{\\"temperature\\": 18}"<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n'
        "\n"
        "18 degrees.<|eot_id|>"
    ),
    ("llama3", "reasoning"): (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n"
        "\n"
        "Cutting Knowledge Date: December 2023\n"
        "Today Date: 26 Jul 2024\n"
        "\n"
        "<|eot_id|><|start_header_id|>user<|end_header_id|>\n"
        "\n"
        "What is 2+2?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n"
        "\n"
        "4<|eot_id|><|start_header_id|>user<|end_header_id|>\n"
        "\n"
        "And 3+3?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n"
        "\n"
        "6<|eot_id|>"
    ),
    ("llama4", "system"): (
        "<|begin_of_text|><|header_start|>system<|header_end|>\n"
        "\n"
        "You are terse.<|eot|><|header_start|>user<|header_end|>\n"
        "\n"
        "Hi!<|eot|><|header_start|>assistant<|header_end|>\n"
        "\n"
        "Hello.<|eot|><|header_start|>user<|header_end|>\n"
        "\n"
        "What is 2+2?<|eot|><|header_start|>assistant<|header_end|>\n"
        "\n"
        "4<|eot|>"
    ),
    ("llama4", "no_system"): (
        "<|begin_of_text|><|header_start|>user<|header_end|>\n"
        "\n"
        "Hi!<|eot|><|header_start|>assistant<|header_end|>\n"
        "\n"
        "Hello.<|eot|><|header_start|>user<|header_end|>\n"
        "\n"
        "What is 2+2?<|eot|><|header_start|>assistant<|header_end|>\n"
        "\n"
        "4<|eot|>"
    ),
    ("llama4", "tools"): (
        "<|begin_of_text|><|header_start|>system<|header_end|>\n"
        "\n"
        "Environment: ipython\n"
        "You are terse.<|eot|><|header_start|>user<|header_end|>\n"
        "\n"
        "Given the following functions, please respond with a JSON for a function call with its proper arguments that best answers the given prompt.\n"
        "\n"
        'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.Do not use variables.\n'
        "\n" + TOOL_INDENTED + "\n"
        "\n"
        "Weather in Paris?<|eot|><|header_start|>assistant<|header_end|>\n"
        "\n"
        '<|python_start|><|python_end|>{"name": "get_weather", "parameters": {"city": "Paris"}}<|eot|>'
        "<|header_start|>ipython<|header_end|>\n"
        "\n"
        '"{\\"temperature\\": 18}"<|eot|><|header_start|>assistant<|header_end|>\n'
        "\n"
        "18 degrees.<|eot|>"
    ),
    ("llama4", "reasoning"): (
        "<|begin_of_text|><|header_start|>user<|header_end|>\n"
        "\n"
        "What is 2+2?<|eot|><|header_start|>assistant<|header_end|>\n"
        "\n"
        "4<|eot|><|header_start|>user<|header_end|>\n"
        "\n"
        "And 3+3?<|eot|><|header_start|>assistant<|header_end|>\n"
        "\n"
        "6<|eot|>"
    ),
    ("mistral_tekken", "system"): ("<s>[INST]Hi![/INST]Hello.</s>[INST]You are terse.\n\nWhat is 2+2?[/INST]4</s>"),
    ("mistral_tekken", "no_system"): "<s>[INST]Hi![/INST]Hello.</s>[INST]What is 2+2?[/INST]4</s>",
    ("mistral_tekken", "tools"): (
        "<s>[AVAILABLE_TOOLS][" + TOOL_LINE + "][/AVAILABLE_TOOLS][INST]You are terse.\n"
        "\n"
        "Weather in Paris?[/INST]"
        '[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Paris"}, "id": "call12345"}]</s>'
        '[TOOL_RESULTS]{"content": "{\\"temperature\\": 18}", "call_id": "call12345"}[/TOOL_RESULTS]18 degrees.</s>'
    ),
    ("mistral_tekken", "reasoning"): "<s>[INST]What is 2+2?[/INST]4</s>[INST]And 3+3?[/INST]6</s>",
    ("mistral_v1", "system"): ("<s> [INST] You are terse.\n\nHi! [/INST] Hello.</s> [INST] What is 2+2? [/INST] 4</s>"),
    ("mistral_v1", "no_system"): "<s> [INST] Hi! [/INST] Hello.</s> [INST] What is 2+2? [/INST] 4</s>",
    ("mistral_v1", "tools"): Rejected("no tool support"),
    ("mistral_v1", "reasoning"): "<s> [INST] What is 2+2? [/INST] 4</s> [INST] And 3+3? [/INST] 6</s>",
    ("mistral_v3", "system"): ("<s>[INST] Hi![/INST] Hello.</s>[INST] You are terse.\n\nWhat is 2+2?[/INST] 4</s>"),
    ("mistral_v3", "no_system"): "<s>[INST] Hi![/INST] Hello.</s>[INST] What is 2+2?[/INST] 4</s>",
    ("mistral_v3", "tools"): (
        "<s>[AVAILABLE_TOOLS] [" + TOOL_LINE + "][/AVAILABLE_TOOLS][INST] You are terse.\n"
        "\n"
        "Weather in Paris?[/INST]"
        '[TOOL_CALLS] [{"name": "get_weather", "arguments": {"city": "Paris"}, "id": "call12345"}]</s>'
        '[TOOL_RESULTS] {"content": "{\\"temperature\\": 18}", "call_id": "call12345"}[/TOOL_RESULTS] 18 degrees.</s>'
    ),
    ("mistral_v3", "reasoning"): "<s>[INST] What is 2+2?[/INST] 4</s>[INST] And 3+3?[/INST] 6</s>",
    ("mistral_v7", "system"): (
        "<s>[SYSTEM_PROMPT] You are terse.[/SYSTEM_PROMPT][INST] Hi![/INST] Hello.</s>[INST] What is 2+2?[/INST] 4</s>"
    ),
    ("mistral_v7", "no_system"): "<s>[INST] Hi![/INST] Hello.</s>[INST] What is 2+2?[/INST] 4</s>",
    ("mistral_v7", "tools"): (
        "<s>[SYSTEM_PROMPT] You are terse.[/SYSTEM_PROMPT][AVAILABLE_TOOLS] [" + TOOL_LINE + "][/AVAILABLE_TOOLS]"
        "[INST] Weather in Paris?[/INST]"
        '[TOOL_CALLS] [{"name": "get_weather", "arguments": {"city": "Paris"}, "id": "call12345"}]</s>'
        '[TOOL_RESULTS] call12345[TOOL_CONTENT] {"temperature": 18}[/TOOL_RESULTS] 18 degrees.</s>'
    ),
    ("mistral_v7", "reasoning"): "<s>[INST] What is 2+2?[/INST] 4</s>[INST] And 3+3?[/INST] 6</s>",
    ("olmo", "system"): (
        "<|endoftext|><|system|>\n"
        "You are terse.\n"
        "<|user|>\n"
        "Hi!\n"
        "<|assistant|>\n"
        "Hello.<|endoftext|>\n"
        "<|user|>\n"
        "What is 2+2?\n"
        "<|assistant|>\n"
        "4<|endoftext|>"
    ),
    ("olmo", "no_system"): (
        "<|endoftext|><|user|>\n"
        "Hi!\n"
        "<|assistant|>\n"
        "Hello.<|endoftext|>\n"
        "<|user|>\n"
        "What is 2+2?\n"
        "<|assistant|>\n"
        "4<|endoftext|>"
    ),
    ("olmo", "tools"): Rejected("no tool support"),
    ("olmo", "reasoning"): (
        "<|endoftext|><|user|>\n"
        "What is 2+2?\n"
        "<|assistant|>\n"
        "4<|endoftext|>\n"
        "<|user|>\n"
        "And 3+3?\n"
        "<|assistant|>\n"
        "6<|endoftext|>"
    ),
    ("phi3", "system"): (
        "<|system|>\n"
        "You are terse.<|end|>\n"
        "<|user|>\n"
        "Hi!<|end|>\n"
        "<|assistant|>\n"
        "Hello.<|end|>\n"
        "<|user|>\n"
        "What is 2+2?<|end|>\n"
        "<|assistant|>\n"
        "4<|end|>\n"
    ),
    ("phi3", "no_system"): (
        "<|user|>\nHi!<|end|>\n<|assistant|>\nHello.<|end|>\n<|user|>\nWhat is 2+2?<|end|>\n<|assistant|>\n4<|end|>\n"
    ),
    ("phi3", "tools"): Rejected("no tool support"),
    ("phi3", "reasoning"): (
        "<|user|>\nWhat is 2+2?<|end|>\n<|assistant|>\n4<|end|>\n<|user|>\nAnd 3+3?<|end|>\n<|assistant|>\n6<|end|>\n"
    ),
    ("phi4", "system"): (
        "<|im_start|>system<|im_sep|>You are terse.<|im_end|>"
        "<|im_start|>user<|im_sep|>Hi!<|im_end|>"
        "<|im_start|>assistant<|im_sep|>Hello.<|im_end|>"
        "<|im_start|>user<|im_sep|>What is 2+2?<|im_end|>"
        "<|im_start|>assistant<|im_sep|>4<|im_end|>"
    ),
    ("phi4", "no_system"): (
        "<|im_start|>user<|im_sep|>Hi!<|im_end|>"
        "<|im_start|>assistant<|im_sep|>Hello.<|im_end|>"
        "<|im_start|>user<|im_sep|>What is 2+2?<|im_end|>"
        "<|im_start|>assistant<|im_sep|>4<|im_end|>"
    ),
    ("phi4", "tools"): Rejected("no tool support"),
    ("phi4", "reasoning"): (
        "<|im_start|>user<|im_sep|>What is 2+2?<|im_end|>"
        "<|im_start|>assistant<|im_sep|>4<|im_end|>"
        "<|im_start|>user<|im_sep|>And 3+3?<|im_end|>"
        "<|im_start|>assistant<|im_sep|>6<|im_end|>"
    ),
    ("qwen2_5", "system"): (
        "<|im_start|>system\n"
        "You are terse.<|im_end|>\n"
        "<|im_start|>user\n"
        "Hi!<|im_end|>\n"
        "<|im_start|>assistant\n"
        "Hello.<|im_end|>\n"
        "<|im_start|>user\n"
        "What is 2+2?<|im_end|>\n"
        "<|im_start|>assistant\n"
        "4<|im_end|>\n"
    ),
    ("qwen2_5", "no_system"): (
        "<|im_start|>system\n"
        "You are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\n"
        "Hi!<|im_end|>\n"
        "<|im_start|>assistant\n"
        "Hello.<|im_end|>\n"
        "<|im_start|>user\n"
        "What is 2+2?<|im_end|>\n"
        "<|im_start|>assistant\n"
        "4<|im_end|>\n"
    ),
    ("qwen2_5", "tools"): (
        "<|im_start|>system\n"
        "You are terse.\n"
        "\n"
        "# Tools\n"
        "\n"
        "You may call one or more functions to assist with the user query.\n"
        "\n"
        "You are provided with function signatures within <tools></tools> XML tags:\n"
        "<tools>\n" + TOOL_LINE + "\n"
        "</tools>\n"
        "\n"
        "For each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n"
        "<tool_call>\n"
        '{"name": <function-name>, "arguments": <args-json-object>}\n'
        "</tool_call><|im_end|>\n"
        "<|im_start|>user\n"
        "Weather in Paris?<|im_end|>\n"
        "<|im_start|>assistant\n"
        "<tool_call>\n"
        '{"name": "get_weather", "arguments": {"city": "Paris"}}\n'
        "</tool_call><|im_end|>\n"
        "<|im_start|>user\n"
        "<tool_response>\n"
        '{"temperature": 18}\n'
        "</tool_response><|im_end|>\n"
        "<|im_start|>assistant\n"
        "18 degrees.<|im_end|>\n"
    ),
    ("qwen2_5", "reasoning"): (
        "<|im_start|>system\n"
        "You are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\n"
        "What is 2+2?<|im_end|>\n"
        "<|im_start|>assistant\n"
        "4<|im_end|>\n"
        "<|im_start|>user\n"
        "And 3+3?<|im_end|>\n"
        "<|im_start|>assistant\n"
        "6<|im_end|>\n"
    ),
    ("qwen3", "system"): (
        "<|im_start|>system\n"
        "You are terse.<|im_end|>\n"
        "<|im_start|>user\n"
        "Hi!<|im_end|>\n"
        "<|im_start|>assistant\n"
        "Hello.<|im_end|>\n"
        "<|im_start|>user\n"
        "What is 2+2?<|im_end|>\n"
        "<|im_start|>assistant\n"
        "<think>\n"
        "\n"
        "</think>\n"
        "\n"
        "4<|im_end|>\n"
    ),
    ("qwen3", "no_system"): (
        "<|im_start|>user\n"
        "Hi!<|im_end|>\n"
        "<|im_start|>assistant\n"
        "Hello.<|im_end|>\n"
        "<|im_start|>user\n"
        "What is 2+2?<|im_end|>\n"
        "<|im_start|>assistant\n"
        "<think>\n"
        "\n"
        "</think>\n"
        "\n"
        "4<|im_end|>\n"
    ),
    ("qwen3", "tools"): (
        "<|im_start|>system\n"
        "You are terse.\n"
        "\n"
        "# Tools\n"
        "\n"
        "You may call one or more functions to assist with the user query.\n"
        "\n"
        "You are provided with function signatures within <tools></tools> XML tags:\n"
        "<tools>\n" + TOOL_LINE + "\n"
        "</tools>\n"
        "\n"
        "For each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n"
        "<tool_call>\n"
        '{"name": <function-name>, "arguments": <args-json-object>}\n'
        "</tool_call><|im_end|>\n"
        "<|im_start|>user\n"
        "Weather in Paris?<|im_end|>\n"
        "<|im_start|>assistant\n"
        "<tool_call>\n"
        '{"name": "get_weather", "arguments": {"city": "Paris"}}\n'
        "</tool_call><|im_end|>\n"
        "<|im_start|>user\n"
        "<tool_response>\n"
        '{"temperature": 18}\n'
        "</tool_response><|im_end|>\n"
        "<|im_start|>assistant\n"
        "<think>\n"
        "\n"
        "</think>\n"
        "\n"
        "18 degrees.<|im_end|>\n"
    ),
    ("qwen3", "reasoning"): (
        "<|im_start|>user\n"
        "What is 2+2?<|im_end|>\n"
        "<|im_start|>assistant\n"
        "4<|im_end|>\n"
        "<|im_start|>user\n"
        "And 3+3?<|im_end|>\n"
        "<|im_start|>assistant\n"
        "<think>\n"
        "Add again.\n"
        "</think>\n"
        "\n"
        "6<|im_end|>\n"
    ),
    ("smollm", "system"): (
        "<|im_start|>system\n"
        "You are terse.<|im_end|>\n"
        "<|im_start|>user\n"
        "Hi!<|im_end|>\n"
        "<|im_start|>assistant\n"
        "Hello.<|im_end|>\n"
        "<|im_start|>user\n"
        "What is 2+2?<|im_end|>\n"
        "<|im_start|>assistant\n"
        "4<|im_end|>\n"
    ),
    ("smollm", "no_system"): (
        "<|im_start|>system\n"
        "You are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
        "<|im_start|>user\n"
        "Hi!<|im_end|>\n"
        "<|im_start|>assistant\n"
        "Hello.<|im_end|>\n"
        "<|im_start|>user\n"
        "What is 2+2?<|im_end|>\n"
        "<|im_start|>assistant\n"
        "4<|im_end|>\n"
    ),
    ("smollm", "tools"): Rejected("no tool support"),
    ("smollm", "reasoning"): (
        "<|im_start|>system\n"
        "You are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
        "<|im_start|>user\n"
        "What is 2+2?<|im_end|>\n"
        "<|im_start|>assistant\n"
        "4<|im_end|>\n"
        "<|im_start|>user\n"
        "And 3+3?<|im_end|>\n"
        "<|im_start|>assistant\n"
        "6<|im_end|>\n"
    ),
    ("vicuna", "system"): "<s>You are terse. USER: Hi! ASSISTANT: Hello.</s>USER: What is 2+2? ASSISTANT: 4</s>",
    ("vicuna", "no_system"): (
        "<s>A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, detailed, and polite answers to the user's questions. "
        "USER: Hi! "
        "ASSISTANT: Hello.</s>"
        "USER: What is 2+2? "
        "ASSISTANT: 4</s>"
    ),
    ("vicuna", "tools"): Rejected("no tool support"),
    ("vicuna", "reasoning"): (
        "<s>A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, detailed, and polite answers to the user's questions. "
        "USER: What is 2+2? "
        "ASSISTANT: 4</s>"
        "USER: And 3+3? "
        "ASSISTANT: 6</s>"
    ),
    ("zephyr", "system"): (
        "<|system|>\n"
        "You are terse.</s>\n"
        "<|user|>\n"
        "Hi!</s>\n"
        "<|assistant|>\n"
        "Hello.</s>\n"
        "<|user|>\n"
        "What is 2+2?</s>\n"
        "<|assistant|>\n"
        "4</s>\n"
    ),
    ("zephyr", "no_system"): (
        "<|user|>\nHi!</s>\n<|assistant|>\nHello.</s>\n<|user|>\nWhat is 2+2?</s>\n<|assistant|>\n4</s>\n"
    ),
    ("zephyr", "tools"): Rejected("no tool support"),
    ("zephyr", "reasoning"): (
        "<|user|>\nWhat is 2+2?</s>\n<|assistant|>\n4</s>\n<|user|>\nAnd 3+3?</s>\n<|assistant|>\n6</s>\n"
    ),
}

# Where the conversation rendered through an assistant message is not a prefix of the whole conversation's
# rendering: mistral_v3/mistral_tekken move the system prompt to the last user turn, and qwen3 rewrites history
# (an empty think block for the last turn, none for earlier ones; reasoning dropped from earlier turns).
NOT_PREFIX_STABLE: dict[tuple[str, str], set[int]] = {
    ("mistral_v3", "system"): {2},
    ("mistral_tekken", "system"): {2},
    ("qwen3", "system"): {2},
    ("qwen3", "no_system"): {1},
    ("qwen3", "tools"): {2},
    ("qwen3", "reasoning"): {1},
}
MOVES_SYSTEM_PROMPT = {"mistral_v3", "mistral_tekken"}

CASES = [(name, conv) for name in TEMPLATES for conv in CONVERSATIONS]
RENDERED = [case for case in CASES if not isinstance(GOLDEN[case], Rejected)]


def _render(name: str, messages: list[dict[str, Any]], conv: str, **kwargs: Any) -> str:
    return render(load_template(name), messages, tools=TOOLS_FOR.get(conv), special_tokens=special(name), **kwargs)


def _assistant_turns(conv: str) -> list[int]:
    return [i for i, m in enumerate(CONVERSATIONS[conv]) if m["role"] == "assistant"]


def test_shipped_templates_have_a_layout_comment() -> None:
    names = shipped_template_names()
    assert len(names) >= 20
    assert set(TEMPLATES) <= set(names)
    for name in names:
        first = load_template(name).text.splitlines()[0]
        assert re.fullmatch(r"\{#- \S.*\S -#\}", first), f"{name}: first line is not a {{#- layout -#}} comment"


def test_goldens_cover_every_template_and_conversation() -> None:
    assert set(GOLDEN) == set(CASES)


@pytest.mark.parametrize(("name", "conv"), CASES)
def test_golden_render(name: str, conv: str) -> None:
    expected = GOLDEN[(name, conv)]
    if isinstance(expected, Rejected):
        with pytest.raises(TemplateError, match=re.escape(expected.match)):
            _render(name, CONVERSATIONS[conv], conv)
    else:
        assert _render(name, CONVERSATIONS[conv], conv) == expected


@pytest.mark.parametrize(("name", "conv"), RENDERED)
def test_generation_prompt_prefixes_the_conversation(name: str, conv: str) -> None:
    messages = CONVERSATIONS[conv]
    full = _render(name, messages, conv)
    unstable = NOT_PREFIX_STABLE.get((name, conv), set())
    for i in _assistant_turns(conv):
        prompt = _render(name, messages[:i], conv, add_generation_prompt=True)
        through = _render(name, messages[: i + 1], conv)
        # what precedes an assistant message is exactly the generation prompt
        assert through.startswith(prompt) and len(through) > len(prompt)
        if name in MOVES_SYSTEM_PROMPT and i in unstable:
            assert not full.startswith(prompt)  # the system prompt moves to the last user turn
        else:
            assert full.startswith(prompt)
        # prefix-stable, except where the template moves content or rewrites history
        assert full.startswith(through) == (i not in unstable)


@pytest.mark.parametrize(("name", "conv"), RENDERED)
def test_generation_spans_cover_each_assistant_turn(name: str, conv: str) -> None:
    template, messages, tools = load_template(name), CONVERSATIONS[conv], TOOLS_FOR.get(conv)
    expected = []
    for i in _assistant_turns(conv):
        prompt = _render(name, messages[:i], conv, add_generation_prompt=True)
        text, spans = render_generation_spans(template, messages[: i + 1], tools=tools, special_tokens=special(name))
        assert text == _render(name, messages[: i + 1], conv)
        assert len(spans) == len(expected) + 1
        assert spans[-1] == (len(prompt), len(text))
        expected.append(spans[-1])
    full, spans = render_generation_spans(template, messages, tools=tools, special_tokens=special(name))
    assert full == _render(name, messages, conv)
    if (name, conv) in NOT_PREFIX_STABLE:
        assert spans[-1] == expected[-1]
    else:
        assert spans == expected


def test_qwen3_enable_thinking_false() -> None:
    messages = CONVERSATIONS["no_system"]
    variables = {**special("qwen3"), "enable_thinking": False}  # passed as template variables, as transformers does
    template = load_template("qwen3")
    prompt = render(template, messages[:3], add_generation_prompt=True, special_tokens=variables)
    assert prompt.endswith("<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n")
    text, spans = render_generation_spans(template, messages, special_tokens=variables)
    assert text == render(template, messages, special_tokens=special("qwen3"))  # the same text either way
    assert spans[-1] == (len(prompt), len(text))  # the empty think block is prompt, not trained text
    assert text[spans[-1][0] :] == "4<|im_end|>\n"
    default_spans = render_generation_spans(template, messages, special_tokens=special("qwen3"))[1]
    assert text[default_spans[-1][0] :] == "<think>\n\n</think>\n\n4<|im_end|>\n"


def test_llama3_date_string() -> None:
    messages = CONVERSATIONS["no_system"]
    assert "Today Date: 26 Jul 2024\n\n" in render(load_template("llama3"), messages, special_tokens=special("llama3"))
    variables = {**special("llama3"), "date_string": "01 Jan 2025"}
    assert "Today Date: 01 Jan 2025\n\n" in render(load_template("llama3"), messages, special_tokens=variables)


@pytest.mark.parametrize("name", ["llama3", "llama4"])
def test_llama_tools_wait_for_the_first_user_turn(name: str) -> None:
    """With tools but no turn after the system prompt, the prompt is the system turn alone (a prefix of the rest)."""
    messages = CONVERSATIONS["tools"]
    system_only = _render(name, messages[:1], "tools")
    assert _render(name, messages, "tools").startswith(system_only)
    assert "Given the following functions" not in system_only


def test_qwen2_5_default_system_prompt_with_tools() -> None:
    text = _render("qwen2_5", CONVERSATIONS["tools"][1:], "tools")
    assert text.startswith(
        "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.\n\n# Tools\n\n"
    )


@pytest.fixture(scope="module")
def hf_tokenizer() -> Any:
    transformers = pytest.importorskip("transformers", reason="transformers is not installed")
    from paths import SHARED_DATA

    path = SHARED_DATA / "tokenizers" / "torchtitan_test_tokenizer"
    if not (path / "tokenizer.json").is_file():
        pytest.skip(f"test tokenizer not found at {path}")
    return transformers.AutoTokenizer.from_pretrained(str(path))


@pytest.mark.parametrize(("name", "conv"), CASES)
def test_matches_transformers(hf_tokenizer: Any, name: str, conv: str) -> None:
    import jinja2

    template, messages, tools = load_template(name), CONVERSATIONS[conv], TOOLS_FOR.get(conv)
    variables = dict(hf_tokenizer.special_tokens_map)  # what apply_chat_template passes besides messages and tools
    for msgs, prompt in ((messages, False), (messages[:-1], True)):
        try:
            ours: str | None = render(
                template, msgs, tools=tools, add_generation_prompt=prompt, special_tokens=variables
            )
        except TemplateError:
            ours = None
        try:
            theirs = hf_tokenizer.apply_chat_template(
                msgs, tools=tools, chat_template=template.text, tokenize=False, add_generation_prompt=prompt
            )
        except jinja2.exceptions.TemplateError:
            theirs = None
        assert ours == theirs


@pytest.mark.parametrize(
    ("name", "conv", "variables"),
    [
        ("qwen3", "reasoning", {"enable_thinking": False}),
        ("qwen3", "tools", {"enable_thinking": True}),
        ("llama3", "tools", {"date_string": "01 Jan 2025", "tools_in_user_message": False}),
        ("llama4", "tools", {"tools_in_user_message": False}),
    ],
)
def test_matches_transformers_with_template_variables(
    hf_tokenizer: Any, name: str, conv: str, variables: dict[str, Any]
) -> None:
    template, messages, tools = load_template(name), CONVERSATIONS[conv], TOOLS_FOR.get(conv)
    for msgs, prompt in ((messages, False), (messages[:-1], True)):
        ours = render(
            template,
            msgs,
            tools=tools,
            add_generation_prompt=prompt,
            special_tokens={**hf_tokenizer.special_tokens_map, **variables},
        )
        theirs = hf_tokenizer.apply_chat_template(
            msgs, tools=tools, chat_template=template.text, tokenize=False, add_generation_prompt=prompt, **variables
        )
        assert ours == theirs


def test_generation_block_scope_matches_transformers(hf_tokenizer: Any) -> None:
    """A ``{% generation %}`` body is its own scope (transformers renders it as a call block): a ``set`` inside it
    does not leak out, the enclosing loop and namespaces stay reachable. Rendering and span tracking agree."""
    text = (
        "{% set ns = namespace(n=0) %}{% set x = 'outer' %}{% for m in messages %}"
        "{% if m.role == 'assistant' %}{% generation %}{% set x = 'inner' %}{% set ns.n = ns.n + 1 %}"
        "{{ m.content }}/{{ loop.index }}/{{ x }}{% endgeneration %}{% else %}{{ m.content }}{% endif %}"
        "|{{ x }}|{% endfor %}{{ ns.n }}"
    )
    template = ChatTemplate("scoped", text, "test")
    messages = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}] * 2
    ours = render(template, messages)
    tracked, spans = render_generation_spans(template, messages)
    theirs = hf_tokenizer.apply_chat_template(messages, chat_template=text, tokenize=False)
    assert ours == tracked == theirs == "q|outer|a/2/inner|outer|q|outer|a/4/inner|outer|2"
    assert [tracked[a:b] for a, b in spans] == ["a/2/inner", "a/4/inner"]
