"""Invariants of the library's constants and tables, as tests: an assert in library code that runs
at import vanishes under `python -O` and fails as an ImportError far from its cause.

(No library module asserted anything at import when this file was written; the guard below keeps
it that way, and any invariant that needs checking belongs here.)"""

from __future__ import annotations

import ast

from test_layout import LIBRARY, sources


def test_library_code_has_no_asserts_at_import_time():
    """An assert that runs at import vanishes under `python -O`; an invariant is a test."""
    found = []
    for path, tree in sources(*LIBRARY):
        stack = list(tree.body)
        while stack:
            node = stack.pop()
            if isinstance(node, ast.Assert):
                found.append(f"{path}:{node.lineno}: {ast.unparse(node)[:80]}")
            elif not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                stack.extend(child for child in ast.iter_child_nodes(node) if isinstance(child, ast.stmt))
    assert not found, "asserts that run at import (make each a test in this file):\n" + "\n".join(found)
