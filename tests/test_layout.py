"""The package layout (DESIGN.md): the import contract, where the environment is read, and what
runs at import time."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LIBRARY = ("search", "models", "data", "storage", "dashboards")
SETTINGS = Path("search/settings.py")
ENV_NAMES = {"environ", "environb", "getenv", "getenvb"}


def sources(*packages: str) -> Iterator[tuple[Path, ast.Module]]:
    for package in packages:
        for path in sorted((ROOT / package).rglob("*.py")):
            yield path.relative_to(ROOT), ast.parse(path.read_text(), filename=str(path))


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

