"""Read a scenario file into plain data plus the line of every value, in one parse.

Bounded and strict, whatever the bytes: at most :data:`MAX_BYTES` of UTF-8
text, at most :data:`MAX_NODES` nodes once aliases are expanded (a "billion
laughs" is refused before anything walks it), no duplicate keys, string keys
only.  Every problem is a :class:`~harness.errors.ScenarioError` with the file
and, where the bytes give one, the line.

>>> import tempfile, os
>>> p = Path(tempfile.mkdtemp()) / "s.yaml"; _ = p.write_text("a:\\n  b: [1, 2]\\n")
>>> doc, lines = read_yaml(p)
>>> doc, lines[("a", "b")], lines[("a", "b", 1)]
({'a': {'b': [1, 2]}}, 2, 2)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from harness.errors import ScenarioError

__all__ = ["read_yaml", "Lines", "MAX_BYTES", "MAX_NODES", "MAX_INT_BITS"]

MAX_BYTES = 1 << 20          # a scenario is a page of YAML; 1 MiB is generous
MAX_NODES = 100_000          # nodes after alias expansion
MAX_INT_BITS = 128           # larger integers are refused before anything compares them
Lines = dict[tuple[object, ...], int]   # path -> line of the key (mappings) or value


def _decode(path: Path, raw: bytes) -> str:
    """UTF-8 text, or an error at the line of the first bad byte."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise ScenarioError(f"not UTF-8 text: byte {raw[e.start]:#04x} at offset {e.start}",
                            file=str(path), line=line) from None


def _yaml_error(path: Path, text: str, e: yaml.YAMLError) -> ScenarioError:
    """A ScenarioError with the line PyYAML knows (marks, or a reader position)."""
    mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
    line: int | None = mark.line + 1 if mark is not None else None
    if line is None and isinstance(e, yaml.reader.ReaderError):
        line = text[:e.position].count("\n") + 1
    problem = getattr(e, "problem", None) or getattr(e, "reason", None) or str(e)
    return ScenarioError(f"YAML syntax error: {problem}", file=str(path), line=line)


class _Loader(yaml.SafeLoader):
    """SafeLoader whose value errors (``!!int zz``, 5,000 digits) carry the node's line."""

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            value = super().construct_object(node, deep)
        except (ValueError, TypeError, OverflowError) as e:
            raise yaml.constructor.ConstructorError(
                None, None, str(e), node.start_mark) from None
        if isinstance(value, int) and value.bit_length() > MAX_INT_BITS:
            raise yaml.constructor.ConstructorError(
                None, None, f"an integer of {value.bit_length()} bits (at most "
                f"{MAX_INT_BITS})", node.start_mark)
        return value


def _compose(path: Path, text: str) -> tuple[yaml.Node | None, _Loader]:
    try:
        loader = _Loader(text)
        return loader.get_single_node(), loader
    except yaml.YAMLError as e:
        raise _yaml_error(path, text, e) from None
    except RecursionError:
        raise ScenarioError("YAML nesting too deep", file=str(path), line=1) from None


def _expanded_size(root: yaml.Node, limit: int) -> int:
    """Nodes under *root* with aliases expanded, counted without expanding them.

    Depth-first with the path marked: meeting a node that is its own ancestor is
    an alias that refers to itself (RecursionError).  Counts stop at *limit* + 1.
    """
    memo: dict[int, int] = {}
    on_path: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        n, leaving = stack.pop()
        kids = _children(n)
        if leaving:
            on_path.discard(id(n))
            memo[id(n)] = min(1 + sum(memo[id(k)] for k in kids), limit + 1)
            continue
        if id(n) in memo:
            continue
        if id(n) in on_path:
            raise RecursionError("an alias refers to itself")
        on_path.add(id(n))
        stack.append((n, True))
        stack.extend((k, False) for k in kids if id(k) not in memo)
    return memo[id(root)]


def _children(n: yaml.Node) -> list[yaml.Node]:
    if isinstance(n, yaml.MappingNode):
        return [x for kv in n.value for x in kv]
    if isinstance(n, yaml.SequenceNode):
        return list(n.value)
    return []


def _index(path: Path, root: yaml.Node) -> Lines:
    """Lines of every path (first occurrence of shared nodes); keys are checked."""
    lines: Lines = {(): root.start_mark.line + 1}
    seen: set[int] = set()
    stack: list[tuple[yaml.Node, tuple[object, ...]]] = [(root, ())]
    while stack:
        node, at = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, yaml.MappingNode):
            keys: set[str] = set()
            for k, v in node.value:
                name = _key(path, k, keys)
                lines[at + (name,)] = k.start_mark.line + 1
                stack.append((v, at + (name,)))
        elif isinstance(node, yaml.SequenceNode):
            for i, v in enumerate(node.value):
                lines[at + (i,)] = v.start_mark.line + 1
                stack.append((v, at + (i,)))
    return lines


def _key(path: Path, k: yaml.Node, keys: set[str]) -> str:
    """A mapping key: a plain string, not seen before in this mapping."""
    line = k.start_mark.line + 1
    if not isinstance(k, yaml.ScalarNode) or k.tag != "tag:yaml.org,2002:str":
        shown = k.value if isinstance(k, yaml.ScalarNode) else type(k).__name__
        raise ScenarioError(f"keys must be strings, not {shown!r} (quote it)",
                            file=str(path), line=line)
    if k.value in keys:
        raise ScenarioError(f"duplicate key {k.value!r}", file=str(path), line=line,
                            field=str(k.value))
    keys.add(k.value)
    return str(k.value)


def read_yaml(path: Path) -> tuple[Any, Lines]:
    """The document and its line index; every failure is a ScenarioError."""
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_BYTES + 1)
    except OSError as e:
        raise ScenarioError(f"cannot read scenario: {e.strerror}", file=str(path)) from None
    if len(raw) > MAX_BYTES:
        raise ScenarioError(f"file larger than {MAX_BYTES} bytes: not a scenario",
                            file=str(path))
    text = _decode(path, raw)
    node, loader = _compose(path, text)
    if node is None:
        raise ScenarioError("a scenario must be a YAML mapping", file=str(path), line=1)
    try:
        if _expanded_size(node, MAX_NODES) > MAX_NODES:
            raise ScenarioError(f"more than {MAX_NODES} YAML nodes once aliases are expanded",
                                file=str(path), line=1)
        lines = _index(path, node)
        doc = loader.construct_document(node)
    except RecursionError:
        raise ScenarioError("YAML nesting too deep or an alias refers to itself",
                            file=str(path), line=1) from None
    except (yaml.YAMLError, ValueError, TypeError) as e:
        mark = getattr(e, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        problem = getattr(e, "problem", None) or str(e)
        raise ScenarioError(f"bad YAML value: {problem}"[:300], file=str(path),
                            line=line or 1) from None
    if not isinstance(doc, dict):
        raise ScenarioError("a scenario must be a YAML mapping", file=str(path), line=1)
    return doc, lines
