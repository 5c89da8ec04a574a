"""The package's import direction: config → data → model → losses/metrics → engine →
report → workflow → cli, with nothing importing a module to its right.

Imports inside functions count too: a lazy import is still a dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import fissure

PACKAGE = Path(fissure.__file__).parent

# Left to right; a module may import from its own layer or any layer to its left.
LAYERS = [
    {"fissure", "errors"},
    {"config", "interruption", "distributed"},
    {"data"},
    {"model", "tiling", "tile_batches", "measurement"},
    {"checkpoint", "inference", "losses", "metrics", "optim", "train_state"},
    {"engine", "evaluation", "prediction", "prediction_files", "export"},
    {"report"},
    {"remote"},
    {"workflow"},
    {"cli", "__main__"},
]
RANK = {name: rank for rank, names in enumerate(LAYERS) for name in names}


def _unit(dotted: str) -> str:
    """``fissure.data.stage_files`` -> ``data``; ``fissure`` -> ``fissure``."""
    parts = dotted.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def _module_name(path: Path, root: Path = PACKAGE) -> str:
    rel = path.relative_to(root.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path, root: Path = PACKAGE) -> list[tuple[int, str]]:
    """(line, dotted fissure module) for every import of fissure code in ``path``."""
    name = _module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text("utf-8"))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.startswith("fissure")]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith("fissure"):
                continue
            if target == "fissure":  # `from . import workflow` names modules
                subs = [a.name for a in node.names
                        if (root / a.name).is_dir() or (root / f"{a.name}.py").is_file()]
                found += [(node.lineno, f"fissure.{s}") for s in subs] or [(node.lineno, target)]
            else:
                found.append((node.lineno, target))
    return found


SOURCES = sorted(PACKAGE.rglob("*.py"))


def test_every_module_has_a_layer() -> None:
    units = {_unit(_module_name(p)) for p in SOURCES}
    assert units <= set(RANK), f"give these a layer in LAYERS: {sorted(units - set(RANK))}"


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_module_imports_one_to_its_right(path: Path) -> None:
    own = RANK[_unit(_module_name(path))]
    wrong = [
        f"line {line}: {target}"
        for line, target in _imports(path)
        if RANK.get(_unit(target), 0) > own
    ]
    assert not wrong, f"{path.name} imports to its right: {wrong}"


def test_only_the_cli_imports_click() -> None:
    users = [
        p.relative_to(PACKAGE).as_posix()
        for p in SOURCES
        if any(
            (isinstance(n, ast.Import) and any(a.name == "click" for a in n.names))
            or (isinstance(n, ast.ImportFrom) and (n.module or "").split(".")[0] == "click")
            for n in ast.walk(ast.parse(p.read_text("utf-8")))
        )
    ]
    assert users == ["cli.py"]


def test_the_checker_sees_a_violation(tmp_path: Path) -> None:
    """The checker itself: lazy, relative and package-level imports are all resolved."""
    root = tmp_path / "fissure"
    (root / "data").mkdir(parents=True)
    (root / "workflow.py").write_text("")
    (root / "data" / "loader.py").write_text(
        "from ..metrics import f1\n"
        "def f():\n    from .. import workflow\n    from fissure.report import fmt\n"
    )
    found = _imports(root / "data" / "loader.py", root)
    assert found == [(1, "fissure.metrics"), (3, "fissure.workflow"), (4, "fissure.report")]
    assert all(RANK[_unit(t)] > RANK["data"] for _, t in found)
