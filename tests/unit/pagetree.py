"""A report page read back with the standard library's html.parser: elements, text, links.

Shared by the unit tests of the HTML report and its browser test (which reads
what the browser shows; this reads what was written).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from html.parser import HTMLParser

__all__ = ["Element", "parse"]

VOID = {"meta", "br", "img", "input", "link", "hr", "wbr", "source", "area", "col", "embed"}


@dataclass
class Element:
    """One element: tag, attributes, its text (with its descendants'), its children."""

    tag: str
    attrs: dict[str, str]
    children: list[Element] = field(default_factory=list)
    text: str = ""

    def iter(self, tag: str | None = None, cls: str | None = None) -> list[Element]:
        """Every descendant (and self) with *tag* and the CSS class *cls*."""
        out = [self] if self._is(tag, cls) else []
        for c in self.children:
            out += c.iter(tag, cls)
        return out

    def _is(self, tag: str | None, cls: str | None) -> bool:
        return ((tag is None or self.tag == tag)
                and (cls is None or cls in self.attrs.get("class", "").split()))

    def by_id(self, ident: str) -> Element:
        found = [e for e in self.iter() if e.attrs.get("id") == ident]
        assert len(found) == 1, f"{len(found)} elements with id {ident!r}"
        return found[0]


class _Builder(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Element("#document", {})
        self.stack = [self.root]
        self.unclosed: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        el = Element(tag, {k: v or "" for k, v in attrs})
        self.stack[-1].children.append(el)
        if tag not in VOID:
            self.stack.append(el)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.stack[-1].children.append(Element(tag, {k: v or "" for k, v in attrs}))

    def handle_endtag(self, tag: str) -> None:
        if tag in VOID:
            return
        assert self.stack[-1].tag == tag, \
            f"</{tag}> closes <{self.stack[-1].tag}> at line {self.getpos()[0]}"
        self.stack.pop()

    def handle_data(self, data: str) -> None:
        for el in self.stack:
            el.text += data


def parse(text: str) -> Element:
    """The document tree of *text*; an end tag that closes the wrong element fails."""
    b = _Builder()
    b.feed(text)
    b.close()
    assert [e.tag for e in b.stack] == ["#document"], f"unclosed: {[e.tag for e in b.stack]}"
    return b.root
