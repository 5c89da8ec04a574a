"""The package's import rules, read from the source with ``ast``.

1. There is no import cycle between fissure's modules.
2. Only ``fissure/snowflake/`` imports the ``snowflake`` library.
3. Only ``fissure/cli/`` imports ``click``.
4. The layers only point downward: a module imports its own unit (top-level module or
   package) or a unit of a lower layer, never a unit of its own layer or a higher one.

Imports inside functions count too: a lazy import is still a dependency.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import fissure

PACKAGE = Path(fissure.__file__).parent

# Bottom to top. Units in one layer are independent of each other.
LAYERS = [
    {"fissure", "errors", "writes"},
    {"progress", "extras"},
    {"config"},
    {"data"},
    {"model"},
    {"runtime"},
    {"checkpoint", "environment"},
    {"losses", "metrics"},
    {"training", "evaluation", "prediction"},
    {"snowflake"},
    {"report"},
    {"api"},
    {"app"},
    {"cli"},
    {"__main__"},
]
RANK = {name: rank for rank, names in enumerate(LAYERS) for name in names}


def _unit(dotted: str) -> str:
    """``fissure.snowflake.files`` -> ``snowflake``; ``fissure`` -> ``fissure``."""
    parts = dotted.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def _module_name(path: Path, root: Path = PACKAGE) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _import_nodes(path: Path) -> Iterator[tuple[ast.AST, int]]:
    for node in ast.walk(ast.parse(path.read_text("utf-8"))):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node, node.lineno


def _imports(path: Path, root: Path = PACKAGE) -> list[tuple[int, str]]:
    """(line, dotted fissure module) for every import of fissure code in ``path``."""
    name = _module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node, line in _import_nodes(path):
        if isinstance(node, ast.Import):
            found += [(line, a.name) for a in node.names if a.name.split(".")[0] == "fissure"]
            continue
        if node.level:
            base = package.split(".")[: len(package.split(".")) - node.level + 1]
            target = ".".join(base + ([node.module] if node.module else []))
        else:
            target = node.module or ""
        if target.split(".")[0] != "fissure":
            continue
        # `from . import api` and `from .snowflake import runs` name modules
        folder = root.joinpath(*target.split(".")[1:])
        subs = [
            f"{target}.{a.name}"
            for a in node.names
            if (folder / a.name).is_dir() or (folder / f"{a.name}.py").is_file()
        ]
        found += [(line, s) for s in subs] or [(line, target)]
    return found


def _library_users(library: str, root: Path = PACKAGE) -> list[str]:
    """Files under ``root`` that import the third-party ``library`` (absolute imports)."""
    users = []
    for path in sorted(root.rglob("*.py")):
        for node, _ in _import_nodes(path):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""] if node.level == 0 else []
            )
            if any(n.split(".")[0] == library for n in names):
                users.append(path.relative_to(root).as_posix())
                break
    return users


def _graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    """Module -> the fissure modules it imports (a package stands for its ``__init__``)."""
    modules = {_module_name(p, root): p for p in root.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets = set()
        for _, target in _imports(path, root):
            while target not in modules and "." in target:
                target = target.rpartition(".")[0]  # `from x.y import name` -> module x.y
            if target != name:
                targets.add(target)
        graph[name] = targets
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle in ``graph`` as a list of modules, or None."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        state[node] = 2
        path.pop()
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start)):
            return found
    return None


SOURCES = sorted(PACKAGE.rglob("*.py"))


def test_there_is_no_import_cycle() -> None:
    assert _cycle(_graph()) is None, " -> ".join(_cycle(_graph()) or [])


def test_only_the_snowflake_package_imports_snowflake() -> None:
    assert all(u.startswith("snowflake/") for u in _library_users("snowflake")), (
        _library_users("snowflake")
    )
    assert _library_users("snowflake"), "fissure/snowflake/ should be the one user"


def test_only_the_cli_imports_click() -> None:
    users = _library_users("click")
    assert users and all(u.startswith("cli/") for u in users), users


def test_every_module_has_a_layer() -> None:
    units = {_unit(_module_name(p)) for p in SOURCES}
    assert units <= set(RANK), f"give these a layer in LAYERS: {sorted(units - set(RANK))}"


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_layers_only_point_downward(path: Path) -> None:
    own = _unit(_module_name(path))
    wrong = [
        f"line {line}: {target}"
        for line, target in _imports(path)
        if _unit(target) != own and RANK.get(_unit(target), 0) >= RANK[own]
    ]
    assert not wrong, f"{path.name} imports sideways or upward: {wrong}"


# -- the checker itself ---------------------------------------------------------------------


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "fissure"
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


def test_the_checker_resolves_lazy_relative_and_package_imports(tmp_path: Path) -> None:
    root = _tree(tmp_path, {
        "api.py": "",
        "snowflake/__init__.py": "",
        "snowflake/runs.py": "",
        "data/loader.py": (
            "from ..metrics import f1\n"
            "def f():\n    from .. import api\n    from fissure.report import fmt\n"
            "    from ..snowflake import runs\n"
        ),
    })
    found = _imports(root / "data" / "loader.py", root)
    assert found == [(1, "fissure.metrics"), (3, "fissure.api"), (4, "fissure.report"),
                     (5, "fissure.snowflake.runs")]
    assert all(RANK[_unit(t)] > RANK["data"] for _, t in found)


def test_the_checker_finds_a_cycle_and_library_users(tmp_path: Path) -> None:
    root = _tree(tmp_path, {
        "a.py": "from .b import x\n",
        "b.py": "def f():\n    from . import a\n",
        "c.py": "import snowflake.snowpark\nfrom .snowflake import y\n",
        "snowflake/__init__.py": "y = 1\n",
    })
    assert _cycle(_graph(root)) == ["fissure.a", "fissure.b", "fissure.a"]
    assert _library_users("snowflake", root) == ["c.py"]
    assert _cycle({"x": {"y"}, "y": set()}) is None


def test_import_fissure_reaches_subpackages_and_names_a_missing_one() -> None:
    # A fresh interpreter: in this one the subpackages are imported already.
    code = (
        "import fissure\n"
        "assert callable(fissure.api.register_checkpoint) and fissure.data.CrackDataset\n"
        "assert callable(fissure.predict) and fissure.prediction.Predictor\n"
        "try:\n"
        "    fissure.nothing_here\n"
        "except AttributeError as exc:\n"
        "    assert \"no attribute 'nothing_here'\" in str(exc)\n"
        "else:\n"
        "    raise SystemExit('no AttributeError')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
