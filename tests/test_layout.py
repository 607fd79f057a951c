"""The shape of the house (docs/architecture.md), checked: module sizes, one-way imports, private APIs in _compat."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "trainlib"
MODULES = sorted(PACKAGE.rglob("*.py"))
MAX_LINES = 400
NAMEDTUPLE_API = ("_replace", "_asdict", "_fields", "_make")  # public despite the underscore


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


NAMES = {module_name(path): path for path in MODULES}


def imported_modules(path: Path) -> set[str]:
    """The trainlib modules ``path`` imports, anywhere in it (functions and TYPE_CHECKING blocks included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}  # `from package import module`
    return {name for name in found if name in NAMES}


def test_no_module_is_longer_than_one_sitting() -> None:
    lengths = {name: len(path.read_text().splitlines()) for name, path in NAMES.items()}
    assert {name: n for name, n in lengths.items() if n > MAX_LINES} == {}


def test_imports_between_trainlib_modules_form_no_circle() -> None:
    graph = {name: imported_modules(path) - {name} for name, path in NAMES.items()}
    # A package's __init__ re-exports its modules; an edge into a package is an edge into what it re-exports,
    # and a module importing its own package's __init__ would be a circle: forbid that outright.
    for name, targets in graph.items():
        parents = {name.rsplit(".", i)[0] for i in range(1, name.count(".") + 1)}
        assert not (targets & parents - {"trainlib"}), f"{name} imports its own package"
    state: dict[str, str] = {}
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = "open"
        path.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == "open":
                pytest.fail("import circle: " + " -> ".join([*path[path.index(target) :], target]))
            if target not in state:
                visit(target)
        path.pop()
        state[node] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name)


def test_tracking_knows_neither_optuna_nor_the_sweep() -> None:
    for name, path in NAMES.items():
        if name.startswith("trainlib.tracking"):
            text = path.read_text()
            assert "import optuna" not in text and "from optuna" not in text, name
            assert not {target for target in imported_modules(path) if target.startswith("trainlib.sweep")}, name


def private_uses(path: Path) -> list[str]:
    """Private names of Optuna or MLflow that ``path`` imports, and `_name` attributes it reads of other objects."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in ("optuna", "mlflow"):
            if any(part.startswith("_") for part in node.module.split(".")):
                found.append(f"from {node.module} import ...")
            found += [f"{node.module}.{alias.name}" for alias in node.names if alias.name.startswith("_")]
        elif isinstance(node, ast.Import):
            found += [
                alias.name for alias in node.names if "._" in alias.name and alias.name.startswith(("optuna", "mlflow"))
            ]
        elif node_is_private_attribute(node):
            owner = node.value
            name = f"{ast.unparse(owner)}.{node.attr}"
            if (
                not (isinstance(owner, ast.Name) and owner.id in ("self", "cls"))
                and name not in PUBLIC_DESPITE_UNDERSCORE
            ):
                found.append(name)
    return found


PUBLIC_DESPITE_UNDERSCORE = {"os._exit"}  # documented standard library API


def node_is_private_attribute(node: ast.AST) -> bool:
    return (
        isinstance(node, ast.Attribute)
        and node.attr.startswith("_")
        and not node.attr.startswith("__")
        and node.attr not in NAMEDTUPLE_API
    )


def test_private_apis_are_reached_only_from_compat() -> None:
    uses = {name: private_uses(path) for name, path in NAMES.items() if name != "trainlib._compat"}
    assert {name: found for name, found in uses.items() if found} == {}
    assert private_uses(PACKAGE / "_compat.py"), "the check above would also pass if it found nothing anywhere"


IMPORT_EVERYTHING = """
import logging, os, signal, sys
before = (dict(os.environ), signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM))
loggers = {name: (list(logger.filters), logger.level) for name, logger in logging.root.manager.loggerDict.items()
           if isinstance(logger, logging.Logger)}
import trainlib, trainlib.cli, trainlib.sweep, trainlib.tracking, trainlib.bench_report, trainlib.ui, trainlib._compat
import trainlib.sweep.workers, trainlib.sweep.report, trainlib.tracking.bench_runs
import mlflow
after = (dict(os.environ), signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM))
changed = sorted(key for key in set(before[0]) | set(after[0]) if before[0].get(key) != after[0].get(key))
assert before == after, f"environment {changed} or signal handlers changed at import"
assert not mlflow.is_tracking_uri_set(), "a global MLflow tracking URI was set at import"
for name in ("optuna.study._optimize", "mlflow.utils.async_logging.async_logging_queue"):
    logger = logging.getLogger(name)
    assert (list(logger.filters), logger.level) == loggers.get(name, ([], logging.NOTSET)), name
print("nothing happened")
"""


def test_nothing_happens_at_import() -> None:
    env = {
        key: value for key, value in __import__("os").environ.items() if "MLFLOW_" not in key
    }  # MLflow's own (its import sets or unsets _MLFLOW_TELEMETRY_SESSION_ID)
    result = subprocess.run(
        [sys.executable, "-c", IMPORT_EVERYTHING], capture_output=True, text=True, timeout=300, check=False, env=env
    )

    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "nothing happened"
