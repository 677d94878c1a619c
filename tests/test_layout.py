"""The package layout is the architecture: imports point one way between stages, and entry modules stay thin."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "lit_tuning"
# Each stage may import itself and the stages listed for it; nothing imports a stage that comes after it.
SHARED = {"paths", "files", "mappings", "commands", "processes"}
ALLOWED = {
    "paths": set(),
    "files": set(),
    "mappings": set(),
    "processes": set(),
    "commands": {"paths"},
    "tracking": SHARED,
    "train": SHARED | {"tracking"},
    "experiment": SHARED | {"tracking", "train"},
    "sweep": SHARED | {"tracking", "train", "experiment"},
    "analysis": SHARED | {"tracking", "train", "experiment", "sweep"},
    "bench": SHARED | {"tracking", "train", "experiment", "sweep", "analysis"},
    "__main__": {"train"},
    "__init__": set(),
}
THIN_LINES = 40  # an __init__.py or __main__.py that holds more than this holds logic that belongs in a module


def stage_of(path: Path) -> str:
    """The stage a module belongs to: its top-level folder, or its own name for a top-level module."""
    relative = path.relative_to(PACKAGE)
    return relative.parts[0] if len(relative.parts) > 1 else relative.stem


def lit_tuning_imports(path: Path) -> list[tuple[int, str]]:
    """(line, imported stage) for every lit_tuning import in a module, function-level imports included."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] if node.module != "lit_tuning" else [f"lit_tuning.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue
        found += [(node.lineno, name.split(".")[1]) for name in names if name.startswith("lit_tuning.")]
    return found


MODULES = sorted(PACKAGE.rglob("*.py"))


def test_every_module_belongs_to_a_known_stage() -> None:
    assert {stage_of(path) for path in MODULES} <= set(ALLOWED)


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.relative_to(PACKAGE).as_posix())
def test_imports_point_one_way(path: Path) -> None:
    stage = stage_of(path)
    wrong = [
        f"line {line}: {stage} imports {target}"
        for line, target in lit_tuning_imports(path)
        if target != stage and target not in ALLOWED[stage]
    ]
    assert not wrong, f"{path.relative_to(PACKAGE)} imports against the one-way rule: {wrong}"


def test_the_rule_catches_an_upward_import(tmp_path: Path) -> None:
    module = tmp_path / "upward.py"
    module.write_text("from lit_tuning.analysis.report import main\nimport lit_tuning.sweep.study\n")
    assert [target for _, target in lit_tuning_imports(module)] == ["analysis", "sweep"]
    assert not {"analysis", "sweep"} <= ALLOWED["train"]


@pytest.mark.parametrize(
    "path",
    [p for p in MODULES if p.name in ("__init__.py", "__main__.py")],
    ids=lambda p: p.relative_to(PACKAGE).as_posix(),
)
def test_entry_and_package_modules_are_thin(path: Path) -> None:
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    assert len(lines) <= THIN_LINES, f"{path.relative_to(PACKAGE)} has {len(lines)} lines; move its logic to a module"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.relative_to(PACKAGE).as_posix())
def test_every_module_says_what_it_is_for(path: Path) -> None:
    docstring = ast.get_docstring(ast.parse(path.read_text()))
    assert docstring, f"{path.relative_to(PACKAGE)} has no module docstring"
