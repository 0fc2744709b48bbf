"""The package layout (DESIGN.md): the import contract, where the environment is read, and what
runs at import time."""

from __future__ import annotations

import ast
import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from helpers.code import LIBRARY, ROOT, sources

SETTINGS = Path("search/settings.py")
ENV_NAMES = {"environ", "environb", "getenv", "getenvb"}


def _lint_imports() -> str:
    beside = Path(sys.executable).parent / "lint-imports"
    return str(beside) if beside.exists() else shutil.which("lint-imports") or "lint-imports"


def test_the_import_contract_holds():
    """pyproject.toml's [tool.importlinter]: arrows point down, search's private modules stay
    search's, nothing imports benchmarks, no cycles inside a package."""
    run = subprocess.run([_lint_imports(), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, f"lint-imports exited {run.returncode}:\n{run.stdout}\n{run.stderr}"


def env_reads(tree: ast.Module) -> list[tuple[int, str]]:
    """(line, expression) of each read of the environment: os.environ / os.getenv (under any
    name the os module is bound to) and `from os import environ, getenv`."""
    os_names = {alias.asname or alias.name for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names if alias.name == "os"}
    writes = {id(node.value) for node in ast.walk(tree)  # os.environ[K] = V configures a library: no read
              if isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Store)}
    reads = []
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and node.attr in ENV_NAMES and isinstance(node.value, ast.Name)
                and node.value.id in os_names and id(node) not in writes):
            reads.append((node.lineno, ast.unparse(node)))
        elif isinstance(node, ast.ImportFrom) and node.module == "os":
            reads += [(node.lineno, f"from os import {a.name}") for a in node.names if a.name in ENV_NAMES]
    return sorted(reads)


def test_env_reads_finds_every_spelling():
    tree = ast.parse("import os\nimport os as o\nfrom os import getenv\nos.environ.get('A')\no.getenv('B')\n"
                     "x = os.environ['C']\nos.path.join('a')\nos.environ['D'] = 'written, not read'\n")
    assert env_reads(tree) == [(3, "from os import getenv"), (4, "os.environ"), (5, "o.getenv"), (6, "os.environ")]


def test_only_search_settings_reads_the_environment():
    found = [f"{path}:{line}: {expr}" for path, tree in sources(*LIBRARY) if path != SETTINGS
             for line, expr in env_reads(tree)]
    assert not found, "the environment is read outside search/settings.py:\n" + "\n".join(found)


def _runs_at_import(tree: ast.Module) -> Iterator[ast.stmt]:
    """Top-level statements other than imports, definitions, constants, the docstring and the
    `if __name__ == "__main__":` guard."""
    for node in tree.body:
        if isinstance(node, (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            continue
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            continue
        if isinstance(node, ast.If) and ast.unparse(node.test) in ("__name__ == '__main__'",):
            continue
        if isinstance(node, (ast.Assign, ast.AnnAssign)) and _is_constant(node.value):
            continue
        yield node


# Calls that only make a value (no I/O, no environment, no work): constants in all but form.
PURE_CALLS = {"logging.getLogger", "Path", "TypeVar", "frozenset", "dict", "tuple", "len", "resolve",
              "optuna.distributions.FloatDistribution", "optuna.distributions.IntDistribution",
              "optuna.distributions.CategoricalDistribution"}


def _is_constant(value: ast.expr | None) -> bool:
    if value is None or isinstance(value, (ast.Constant, ast.Name)):
        return True
    if isinstance(value, ast.Call):
        func = ast.unparse(value.func)
        name = func.rsplit(".", 1)[-1] if isinstance(value.func, ast.Attribute) and not func.startswith("optuna") \
            else func
        return (name in PURE_CALLS or func in PURE_CALLS) and all(
            _is_constant(child) for child in (*value.args, *(k.value for k in value.keywords)))
    if isinstance(value, ast.Attribute):  # Path(...).parent
        return _is_constant(value.value)
    if isinstance(value, ast.Dict):
        return all(_is_constant(k) and _is_constant(v) for k, v in zip(value.keys, value.values))
    if isinstance(value, ast.JoinedStr):
        return all(_is_constant(v.value) if isinstance(v, ast.FormattedValue) else True for v in value.values)
    return isinstance(value, (ast.Tuple, ast.List, ast.Set, ast.UnaryOp, ast.BinOp)) and all(
        _is_constant(child) for child in ast.iter_child_nodes(value) if isinstance(child, ast.expr))


def test_the_import_time_check_tells_values_from_work():
    constants = "A = Path(__file__).resolve().parent / 'x'\nB = {'a': '0'}\nC = f'{len(B)} items'\nT = TypeVar('T')\n"
    work = "os.environ.setdefault('A', '1')\nD = load_dataset('x')\nE = Path('x').read_text()\n"
    assert list(_runs_at_import(ast.parse(constants))) == []
    assert len(list(_runs_at_import(ast.parse(work)))) == 3


def test_benchmarks_do_nothing_at_import_but_define_constants():
    found = [f"{path}:{node.lineno}: {ast.unparse(node)[:80]}" for path, tree in sources("benchmarks")
             for node in _runs_at_import(tree)]
    assert not found, "benchmark modules run code at import time:\n" + "\n".join(found)


# An assert in library code that runs at import vanishes under `python -O` and fails as an ImportError
# far from its cause: an invariant of the library's constants and tables is a test, here.
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


def test_the_study_layers_and_the_cli_load_no_deep_learning_backend():
    """search.spec and search.study never load Keras, TensorFlow or JAX (import-linter checks their
    direct imports; this checks the whole chain, models and data included), nor does anything
    `python -m search status` or a worker imports before its placement."""
    code = ("import sys, search, search.spec, search.study, search.commands, search.worker, search.__main__, "
            "search.worker.__main__; print(sorted(m for m in ('keras', 'tensorflow', 'jax') if m in sys.modules))")
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "[]", run.stdout


def _imports_inside_functions(tree: ast.Module) -> Iterator[ast.stmt]:
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield from (sub for sub in ast.walk(node) if isinstance(sub, (ast.Import, ast.ImportFrom)))


def test_imports_inside_functions_in_search_are_few_and_each_says_why():
    """The lazy boundary (Keras after settings and placement) is written in search/worker/__main__.py;
    any other import inside a function carries its reason in a comment on its line or the line above,
    or in its module's docstring (search/runtime.py)."""
    found, unexplained = [], []
    for path, tree in sources("search"):
        lines = (ROOT / path).read_text().splitlines()
        doc = ast.get_docstring(tree) or ""
        for node in _imports_inside_functions(tree):
            found.append(f"{path}:{node.lineno}")
            said = "#" in lines[node.lineno - 1] or lines[node.lineno - 2].strip().startswith("#")
            if not (said or "inside the functions" in doc):
                unexplained.append(f"{path}:{node.lineno}: {ast.unparse(node)}")
    assert len(found) <= 12, f"{len(found)} imports inside functions (at most about 10): {found}"
    assert not unexplained, "imports inside functions without a reason:\n" + "\n".join(unexplained)


def test_bandit_finds_nothing_in_the_packages():
    """Bandit's security lint over the packages, with the skips [tool.bandit] explains; any other
    finding fails here, and a deliberate one carries `# nosec <test>` with its reason on its line."""
    run = subprocess.run([sys.executable, "-m", "bandit", "-r", *LIBRARY, "-c", "pyproject.toml", "-q", "-f", "json"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode in (0, 1), run.stderr[-2000:]  # 1: findings; anything else: bandit itself failed
    report = json.loads(run.stdout)
    found = [f"{r['filename']}:{r['line_number']} {r['test_id']} {r['issue_text']}" for r in report["results"]]
    assert not found, "bandit:\n" + "\n".join(found)
    assert report["metrics"]["_totals"]["loc"] > 10_000  # it read the packages
