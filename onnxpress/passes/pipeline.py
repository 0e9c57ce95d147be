"""Textual pipelines, MLIR style: parse and print round-trip exactly.

Grammar::

    pipeline := element ("," element)*
    element  := NAME options? ("(" pipeline ")")?
    options  := "{" (KEY "=" VALUE)* "}"            pairs separated by spaces
    VALUE    := bare text without spaces, "{", "}" | a double-quoted string

Example: ``fold-constants,fixpoint{max-iters=4}(cse,dce),prune-channels{ratio=0.3 round-to=8}``.
Parsing yields `PipelineElement` trees that keep option values as the text written; building
turns them into pass instances through the registry (named pipelines expand there).
"""

from __future__ import annotations

import dataclasses

from onnxpress.errors import PipelineError

__all__ = ["PipelineElement", "parse_pipeline", "print_pipeline", "build_pipeline"]


@dataclasses.dataclass
class PipelineElement:
    name: str
    options: list[tuple[str, str]]
    children: list["PipelineElement"] | None  # None: no parentheses; [] is "()"

    def to_text(self) -> str:
        text = self.name
        if self.options:
            text += "{" + " ".join(f"{k}={_quote(v)}" for k, v in self.options) + "}"
        if self.children is not None:
            text += "(" + print_pipeline(self.children) + ")"
        return text


def _quote(value: str) -> str:
    if value == "" or any(c in value for c in ' {}"\t\n') or not _balanced(value):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return value


def _balanced(value: str) -> bool:
    depth = 0
    for c in value:
        depth += c == "("
        depth -= c == ")"
        if depth < 0:
            return False
    return depth == 0


def print_pipeline(elements: list[PipelineElement]) -> str:
    return ",".join(e.to_text() for e in elements)


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def error(self, message: str) -> PipelineError:
        pointer = f" at position {self.pos}" if self.pos < len(self.text) else " at the end"
        return PipelineError(f"cannot parse pipeline {self.text!r}: {message}{pointer}")

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def skip_ws(self) -> None:
        while self.peek() and self.peek() in " \t\n":
            self.pos += 1

    def name(self) -> str:
        start = self.pos
        while self.peek() and (self.peek().isalnum() or self.peek() in "-_.:"):
            self.pos += 1
        if start == self.pos:
            raise self.error("expected a pass name")
        return self.text[start : self.pos]

    def value(self) -> str:
        if self.peek() == '"':
            self.pos += 1
            out = []
            while True:
                c = self.peek()
                if not c:
                    raise self.error("unterminated quoted value")
                self.pos += 1
                if c == "\\" and self.peek():
                    out.append(self.peek())
                    self.pos += 1
                elif c == '"':
                    return "".join(out)
                else:
                    out.append(c)
        start = self.pos
        depth = 0
        while self.peek():
            c = self.peek()
            if c in " \t\n" or (c == "}" and depth == 0) or c == "{":
                break
            # parentheses inside values (a regex group) are allowed while balanced
            if c == "(":
                depth += 1
            elif c == ")":
                depth -= 1
            self.pos += 1
        return self.text[start : self.pos]

    def options(self) -> list[tuple[str, str]]:
        self.pos += 1  # "{"
        items: list[tuple[str, str]] = []
        while True:
            self.skip_ws()
            if self.peek() == "}":
                self.pos += 1
                return items
            if not self.peek():
                raise self.error("missing '}'")
            key = self.name()
            if self.peek() != "=":
                raise self.error(f"expected '=' after option '{key}'")
            self.pos += 1
            items.append((key, self.value()))

    def element(self) -> PipelineElement:
        self.skip_ws()
        name = self.name()
        options: list[tuple[str, str]] = []
        children = None
        if self.peek() == "{":
            options = self.options()
        if self.peek() == "(":
            self.pos += 1
            children = [] if self.peek() == ")" else self.pipeline()
            if self.peek() != ")":
                raise self.error("missing ')'")
            self.pos += 1
        self.skip_ws()
        return PipelineElement(name, options, children)

    def pipeline(self) -> list[PipelineElement]:
        elements = [self.element()]
        while self.peek() == ",":
            self.pos += 1
            elements.append(self.element())
        return elements

    def parse(self) -> list[PipelineElement]:
        self.skip_ws()
        if not self.peek():
            return []
        elements = self.pipeline()
        if self.pos != len(self.text):
            raise self.error(f"unexpected {self.peek()!r}")
        return elements


def parse_pipeline(text: str) -> list[PipelineElement]:
    """Parse pipeline text; `print_pipeline(parse_pipeline(t)) == t` for canonical text."""
    return _Parser(text).parse()


def build_pipeline(text_or_elements: str | list[PipelineElement]) -> list:
    """Pipeline text -> pass instances, via the registry (named pipelines are expanded)."""
    from onnxpress.passes import registry

    elements = parse_pipeline(text_or_elements) if isinstance(text_or_elements, str) else text_or_elements
    passes = []
    for element in elements:
        passes.extend(registry.instantiate(element))
    return passes
