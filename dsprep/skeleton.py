"""Render a conversation from a cached skeleton when the template treats message content as opaque text.

Most chat templates only ever *write* a message's content: they put it in the output, perhaps joined to other
strings, and at most ask whether it is a string or empty. Such a template's output is a function of the
conversation's shape (roles, names, which contents are empty, ``add_generation_prompt``) with each content pasted in
where the template writes it. `opaque_content` proves that from the template's syntax tree; `SkeletonRenderer` then
renders each shape once with placeholder contents and builds every later conversation of that shape by pasting its
contents into the skeleton, byte for byte what the template renders, without running it.

The proof is conservative. Every expression that denotes the messages list, a message, or a content must sit where
only its shape can matter: a content may be output (directly or through ``+``/``~``/``and``/``or``/``if-else``), tested
for its type or for being empty, and nothing else (no filter, method, comparison, slice, assignment, macro argument,
or output captured by a macro, ``set`` block, filter block or call block). Templates that look elsewhere (``| trim``,
``'x' in content``, ``messages | tojson``, ``strftime_now``) are rendered in full as before.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import jinja2.nodes as nodes

from dsprep.errors import TemplateError, TemplateTimeoutError
from dsprep.sandbox import MAX_OUTPUT, MAX_STRING
from dsprep.templates import ChatTemplate, parse_template, render

__all__ = ["SkeletonRenderer", "opaque_content"]

# tests whose answer depends only on a value's type (a content here is always a string)
TYPE_TESTS = frozenset({"string", "defined", "undefined", "none", "mapping", "sequence", "iterable", "number",
                        "integer", "float", "boolean", "callable", "true", "false"})  # fmt: skip
LIST_FILTERS = frozenset({"length", "count"})  # filters of the messages list that see only its length
# names whose value changes from one render to the next
UNSTABLE = frozenset({"strftime_now", "lipsum"})
# statements whose output is captured as a value rather than written, and so could be transformed
CAPTURING = (nodes.Macro, nodes.CallBlock, nodes.FilterBlock, nodes.AssignBlock, nodes.Block)
DICT_ATTRIBUTES = frozenset(dir(dict))  # a message's methods (items(), values() ...) would expose its content
MESSAGE_KEYS = frozenset({"role", "content", "name"})
MAX_SHAPES = 4096
MAX_TEXT = min(MAX_STRING, MAX_OUTPUT)  # no value a proven template builds from contents is longer than its output
OPEN, CLOSE = "\ue000", "\ue001"  # private-use characters around a placeholder: <OPEN>dsprep <word> <i><CLOSE>
# two spellings: a skeleton must come out the same with either (no template can forge both)
PLACEHOLDER_WORDS = ("content", "message")

_LIST, _MESSAGE, _FIELD, _CONTENT = "list", "message", "field", "content"


def _children(node: nodes.Node) -> list[tuple[str, nodes.Node]]:
    out = []
    for field, value in node.iter_fields():
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, nodes.Node):
                out.append((field, item))
    return out


class _Proof:
    """Walks a template's tree, labelling each expression (list, message, field, content) and checking its use."""

    def __init__(self, tree: nodes.Template) -> None:
        self.parents: dict[int, tuple[nodes.Node, str]] = {}
        self.order: list[nodes.Node] = []
        self._walk(tree)
        self.kinds: dict[int, str] = {}
        self.names: dict[str, str] = {}  # variable -> what it holds: a loop over the messages, or a `set` of one
        self.ambiguous: str | None = None
        while True:  # to a fixed point: `set b = a` names what `set a = messages[1:]` named
            self.kinds.clear()
            found = dict(self._bindings())
            if found == self.names or self.ambiguous is not None:
                break
            self.names = found

    def _bindings(self) -> list[tuple[str, str]]:
        """(variable, kind) for each loop over a list of messages and each `set` of a list, message or content."""
        out: list[tuple[str, str]] = []
        seen: dict[str, str] = {}
        for node in self.order:
            if isinstance(node, nodes.For) and isinstance(node.target, nodes.Name) and self.kind(node.iter) == _LIST:
                out.append((node.target.name, _MESSAGE))
            elif isinstance(node, nodes.Assign) and isinstance(node.target, nodes.Name):
                kind = self.kind(node.node)
                if kind in (_LIST, _MESSAGE, _CONTENT):
                    out.append((node.target.name, kind))
        for name, kind in out:
            if seen.setdefault(name, kind) != kind:
                self.ambiguous = f"{name} holds a {seen[name]} in one place and a {kind} in another"
        return out

    def _walk(self, root: nodes.Node) -> None:
        stack: list[nodes.Node] = [root]
        while stack:
            node = stack.pop()
            self.order.append(node)
            for field, child in _children(node):
                self.parents[id(child)] = (node, field)
                stack.append(child)

    def kind(self, node: nodes.Node) -> str | None:
        """What `node` denotes, computed from its children (memoized)."""
        key = id(node)
        if key not in self.kinds:
            self.kinds[key] = self._kind(node) or ""
        return self.kinds[key] or None

    def _kind(self, node: nodes.Node) -> str | None:
        if isinstance(node, nodes.Name) and node.ctx == "load":
            return _LIST if node.name == "messages" else self.names.get(node.name)
        if isinstance(node, nodes.Getattr):
            inner = self.kind(node.node)
            if inner == _MESSAGE:
                return _CONTENT if node.attr == "content" else _FIELD
            if isinstance(node.node, nodes.Name) and node.node.name == "loop" and node.attr in ("previtem", "nextitem"):
                return _MESSAGE
            return None
        if isinstance(node, nodes.Getitem):
            inner = self.kind(node.node)
            if inner == _LIST:
                return _LIST if isinstance(node.arg, nodes.Slice) else _MESSAGE
            if inner == _MESSAGE and isinstance(node.arg, nodes.Const) and isinstance(node.arg.value, str):
                return _CONTENT if node.arg.value == "content" else _FIELD
            return None
        if isinstance(node, nodes.Call) and (key := self._message_get(node)) is not None:
            return _CONTENT if key == "content" else _FIELD
        if isinstance(node, (nodes.Add, nodes.Concat, nodes.And, nodes.Or, nodes.CondExpr)):
            operands = [c for f, c in _children(node) if not (isinstance(node, nodes.CondExpr) and f == "test")]
            if any(self.kind(c) == _CONTENT for c in operands):
                return _CONTENT
        return None

    def _message_get(self, call: nodes.Call) -> str | None:
        """The key of ``message.get('key'[, default])``, else None."""
        get = call.node
        if not isinstance(get, nodes.Getattr) or get.attr != "get" or self.kind(get.node) != _MESSAGE:
            return None
        if call.kwargs or call.dyn_args or call.dyn_kwargs or not 1 <= len(call.args) <= 2:
            return None
        key = call.args[0]
        return key.value if isinstance(key, nodes.Const) and isinstance(key.value, str) else None

    def _is_message_get(self, getattr_node: nodes.Getattr) -> bool:
        parent = self.parents.get(id(getattr_node))
        return parent is not None and isinstance(parent[0], nodes.Call) and self._message_get(parent[0]) is not None

    def problem(self) -> str | None:
        """Why the template is not content-opaque, or None where it is."""
        if self.ambiguous is not None:
            return self.ambiguous
        for node in self.order:
            if isinstance(node, nodes.Name) and node.name in UNSTABLE:
                return f"it calls {node.name}"
            if isinstance(node, nodes.Filter) and node.name == "random":
                return "it uses the random filter"
            if isinstance(node, (nodes.EvalContextModifier, nodes.ScopedEvalContextModifier)):
                return "it changes autoescaping"
            if isinstance(node, nodes.For) and node.recursive and self.kind(node.iter) == _LIST:
                return "it loops over the messages recursively"
            kind = self.kind(node)
            if kind is not None:
                found = self._misuse(node, kind)
                if found is not None:
                    return f"line {node.lineno}: {found}"
        return None

    def _misuse(self, node: nodes.Node, kind: str) -> str | None:
        parent, field = self.parents[id(node)]
        if kind == _CONTENT and isinstance(node, (nodes.Add, nodes.Concat)):
            return self._written(node)
        if isinstance(parent, (nodes.Not, nodes.If)) and field in ("node", "test"):
            return None  # truth: a list's length and a content's emptiness are in the shape; a message has a role
        if isinstance(parent, (nodes.CondExpr, nodes.For)) and field == "test":
            return None
        if isinstance(parent, nodes.Test) and field == "node" and parent.name in TYPE_TESTS:
            return None
        if kind == _FIELD:
            return None  # a role or a name: part of the shape, so any use is fine
        if isinstance(parent, nodes.Assign) and field == "node" and isinstance(parent.target, nodes.Name):
            if kind != _CONTENT or isinstance(node, (nodes.Name, nodes.Getattr, nodes.Getitem, nodes.Call)):
                return None  # the variable is followed like the value (`_bindings`); a content only as read
            return "a value chosen from a message's content is stored in a variable"
        if kind == _LIST:
            if isinstance(parent, nodes.For) and field == "iter" and isinstance(parent.target, nodes.Name):
                return None
            if isinstance(parent, nodes.Getitem) and field == "node":
                return None
            if isinstance(parent, nodes.Filter) and field == "node" and parent.name in LIST_FILTERS:
                return None
            return "the messages list is used other than by looping over it, indexing it or taking its length"
        if kind == _MESSAGE:
            if isinstance(parent, nodes.Getattr) and (
                parent.attr not in DICT_ATTRIBUTES or self._is_message_get(parent)
            ):
                return None
            if isinstance(parent, nodes.Getitem) and field == "node":
                arg = parent.arg
                if isinstance(arg, nodes.Const) and isinstance(arg.value, str) and arg.value not in DICT_ATTRIBUTES:
                    return None
            if isinstance(parent, nodes.Operand) and parent.op in ("in", "notin"):
                compare = self.parents[id(parent)][0]
                if isinstance(compare, nodes.Compare) and len(compare.ops) == 1:
                    return None  # which keys a message has is part of the shape
            return "a message is used other than by reading one of its fields by name"
        # a content, or a value built from one
        if isinstance(parent, (nodes.Add, nodes.Concat, nodes.And, nodes.Or, nodes.CondExpr)):
            return None  # the parent is itself a content and is checked in turn
        if isinstance(parent, nodes.Output):
            return self._captured(parent)
        return f"a message's content goes into {type(parent).__name__.lower()}, not straight to the output"

    def _written(self, node: nodes.Node) -> str | None:
        """A string built from a content (``+``, ``~``) must be written out whole: then no value a render builds is
        longer than its output, and the sandbox's size limits fail a skeleton render exactly when they fail the full
        one (`MAX_TEXT`)."""
        parent, field = self.parents[id(node)]
        while isinstance(parent, (nodes.Add, nodes.Concat)) or (isinstance(parent, nodes.CondExpr) and field != "test"):
            node = parent
            parent, field = self.parents[id(node)]
        if isinstance(parent, nodes.Output):
            return self._captured(parent)
        return f"a string built from a message's content goes into {type(parent).__name__.lower()}, not to the output"

    def _captured(self, output: nodes.Output) -> str | None:
        node: nodes.Node = output
        while id(node) in self.parents:
            node = self.parents[id(node)][0]
            if isinstance(node, CAPTURING):
                return f"a message's content is written inside a {type(node).__name__.lower()}, which captures it"
        return None


def opaque_content(template: ChatTemplate) -> str | None:
    """None where the template treats every message's content as opaque text, else why it does not."""
    try:
        tree = parse_template(template.text)
    except TemplateError as exc:
        return str(exc)
    if OPEN in template.text or "\\ue000" in template.text.lower():
        return "the template contains the placeholder character"
    return _Proof(tree).problem()


class SkeletonRenderer:
    """Renders conversations of a content-opaque template from one skeleton per conversation shape."""

    def __init__(self, template: ChatTemplate, special_tokens: Mapping[str, str]) -> None:
        self.template = template
        self.special_tokens = dict(special_tokens)
        self.problem = opaque_content(template)
        if self.problem is None and any(OPEN in v for v in self.special_tokens.values()):
            self.problem = "a special token contains the placeholder character"
        self._shapes: dict[tuple[Any, ...], list[str | int]] = {}
        self.pasted = 0  # conversations built from a skeleton

    @property
    def usable(self) -> bool:
        return self.problem is None

    def render(self, messages: Sequence[Mapping[str, Any]], *, generation_prompt: bool = False) -> str | None:
        """The rendered conversation (no tools), or None where it must be rendered in full."""
        if self.problem is not None:
            return None
        shape: list[Any] = [generation_prompt]
        contents: list[str] = []
        for m in messages:
            if not MESSAGE_KEYS.issuperset(m):
                return None
            role, name, content = m.get("role"), m.get("name"), m.get("content")
            if type(role) is not str or OPEN in role or (name is not None and (type(name) is not str or OPEN in name)):
                return None
            if content is not None and type(content) is not str:
                return None
            # a template may tell an absent field from a None one, and a None content from an empty one
            shape.append((role, "name" in m, name, "content" in m, content if not content else True))
            contents.append(content or "")
        key = tuple(shape)
        parts = self._shapes.get(key)
        if parts is None:
            parts = self._skeleton(messages, generation_prompt)
            if parts is None:
                return None
            if len(self._shapes) < MAX_SHAPES:
                self._shapes[key] = parts
        text = "".join([contents[p] if type(p) is int else p for p in parts])  # type: ignore[misc]
        if len(text) > MAX_TEXT:
            return None  # it may hit a size limit: the full render says
        self.pasted += 1
        return text

    def _skeleton(self, messages: Sequence[Mapping[str, Any]], generation_prompt: bool) -> list[str | int] | None:
        """The shape's text as literal pieces and message indices, or None where it cannot be had."""
        found = [self._skeleton_with(word, messages, generation_prompt) for word in PLACEHOLDER_WORDS]
        return found[0] if all(f == found[0] for f in found) else None

    def _skeleton_with(
        self, word: str, messages: Sequence[Mapping[str, Any]], generation_prompt: bool
    ) -> list[str | int] | None:
        placeholders = []
        for i, m in enumerate(messages):
            out = dict(m)
            if m.get("content"):
                out["content"] = f"{OPEN}dsprep {word} {i}{CLOSE}"
            placeholders.append(out)
        try:
            text = render(self.template, placeholders, add_generation_prompt=generation_prompt,
                          special_tokens=self.special_tokens)  # fmt: skip
        except TemplateTimeoutError:
            raise
        except TemplateError:
            return None  # the full render reports it
        pieces = re.split(f"{OPEN}dsprep {word} (\\d+){CLOSE}", text)
        parts: list[str | int] = []
        for k, piece in enumerate(pieces):
            if k % 2:
                parts.append(int(piece))
            elif piece:
                parts.append(piece)
        return parts
