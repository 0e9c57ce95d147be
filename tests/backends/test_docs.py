"""docs/targets.md holds the capability tables exactly as the backends' data generates them."""

from __future__ import annotations

import os

from onnxpress.backends._docs import BEGIN, END, targets_markdown
from onnxpress.backends.base import BUILTIN_TARGETS, backend_names

DOC = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "docs", "targets.md")


def test_targets_doc_matches_the_capabilities():
    with open(DOC, encoding="utf-8") as f:
        text = f.read()
    start, end = text.index(BEGIN), text.index(END) + len(END)
    assert text[start:end] == targets_markdown(), "regenerate with: python -m onnxpress.backends._docs"


def test_every_builtin_target_is_registered():
    assert set(BUILTIN_TARGETS) <= set(backend_names())
