"""The package draws DESIGN's data flow: ground -> importers -> analyzers -> exporters ->
regularizers -> faces (CLI, explorer, API), read from every module's import statements."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path


ROOT = Path(__file__).resolve().parents[2]
# Folder in the repository -> (installed package, rank). A module may import its own rank
# or lower; faces (rank 5) may not import each other.
STAGES = {
    "importers": ("morphscope.importers", 1),
    "analyzers": ("morphscope.analyzers", 2),
    "exporters": ("morphscope.exporters", 3),
    "regularizers": ("morphscope.regularizers", 4),
    "cli": ("morphscope.cli", 5),
    "explorer": ("morphscope.explorer", 5),
}
GROUND = {"morphscope.graph", "morphscope.errors", "morphscope.units"}
FACES_IN_GROUND = {"morphscope.api": 5, "morphscope": 5, "morphscope.__main__": 5}
FRAMEWORKS = {"torch", "torchvision", "tensorflow", "keras", "tf_keras", "triton", "timm"}
FRAMEWORK_STAGES = {"morphscope.importers", "morphscope.exporters", "morphscope.regularizers"}
UI = {"streamlit", "plotly"}


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    if parts[0] == "morphscope":
        return ".".join(parts)
    return ".".join([STAGES[parts[0]][0], *parts[1:]]) if len(parts) > 1 else STAGES[parts[0]][0]


def _rank(module: str) -> tuple[int, str]:
    if module in GROUND:
        return 0, "ground"
    if module in FACES_IN_GROUND:
        return FACES_IN_GROUND[module], module
    for package, rank in STAGES.values():
        if module == package or module.startswith(package + "."):
            return rank, package
    raise KeyError(module)


def _imports(path: Path) -> list[str]:
    """Every module named by an import statement, at any depth (lazy imports included)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.append(node.module)
            found += [f"{node.module}.{alias.name}" for alias in node.names]
    return found


def _package_modules() -> list[Path]:
    return sorted(p for folder in ["morphscope", *STAGES] for p in (ROOT / folder).rglob("*.py"))


def _resolve(name: str) -> str | None:
    """The morphscope module an imported name refers to (a module, or its parent for a symbol)."""
    if not name.startswith("morphscope"):
        return None
    candidates = [name, name.rsplit(".", 1)[0]]
    for candidate in candidates:
        try:
            _rank(candidate)
            return candidate
        except KeyError:
            continue
    return None


def test_no_module_imports_a_stage_to_its_right():
    violations = []
    for path in _package_modules():
        me = _module_name(path)
        my_rank, my_stage = _rank(me)
        for name in _imports(path):
            target = _resolve(name)
            if target is None or target == me:
                continue
            rank, stage = _rank(target)
            if rank > my_rank or (rank == my_rank == 5 and stage != my_stage and me != "morphscope"):
                violations.append(f"{me} imports {target}")
    assert violations == []


def test_frameworks_and_ui_are_imported_only_where_design_allows():
    violations = []
    for path in _package_modules():
        me = _module_name(path)
        stage = _rank(me)[1]
        for name in _imports(path):
            top = name.split(".")[0]
            if top in FRAMEWORKS and stage not in FRAMEWORK_STAGES:
                violations.append(f"{me} imports {name}")
            if top in UI and stage != "morphscope.explorer":
                violations.append(f"{me} imports {name}")
    assert violations == []


def test_code_never_imports_the_bare_folder_names():
    """`import analyzers` would load a second copy of a module next to morphscope.analyzers."""
    bare = {"importers", "analyzers", "exporters", "regularizers", "explorer", "cli"}
    offenders = []
    for path in sorted(ROOT.rglob("*.py")):
        if any(part.startswith(".") for part in path.relative_to(ROOT).parts):
            continue
        for name in _imports(path):
            if name.split(".")[0] in bare:
                offenders.append(f"{path.relative_to(ROOT)}: {name}")
    assert offenders == []


def test_the_layout_rule_catches_an_import_against_the_flow(tmp_path):
    # The checker itself, on a module written here: an analyzer importing the exporters.
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from morphscope.exporters.writers import widths_json\n")
    assert "morphscope.exporters.writers" in _imports(bad)
    assert _rank(_resolve("morphscope.exporters.writers.widths_json"))[0] > STAGES["analyzers"][1]


def test_the_distribution_installs_one_top_level_name(tmp_path):
    """Build the wheel pip would install (from a copy: the build writes beside its sources)
    and list the top-level names it puts in site-packages."""
    source = tmp_path / "src"
    source.mkdir()
    shutil.copy(ROOT / "pyproject.toml", source)
    for folder in ["morphscope", *STAGES]:
        shutil.copytree(ROOT / folder, source / folder, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(tmp_path / "dist"), str(source)], check=True, capture_output=True)
    wheel = next((tmp_path / "dist").glob("morphscope-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith((".dist-info", ".data"))}
    assert top == {"morphscope"}
    for package in ("analyzers", "importers", "exporters", "regularizers", "explorer", "cli"):
        assert f"morphscope/{package}/__init__.py" in names


def test_no_test_folder_shadows_the_installed_name():
    # pytest puts tests/ on sys.path: a tests/morphscope folder would be a namespace package
    # named morphscope that hides the real one from tests imported after it.
    assert not (ROOT / "tests" / "morphscope").exists()
    import morphscope

    assert Path(morphscope.__file__).parent == ROOT / "morphscope"
