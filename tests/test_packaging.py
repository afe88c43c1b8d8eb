"""The package's shape: stage packages only at its top, imports that run from a stage to earlier ones only, and the
wheel's package list in step with the tree."""

import ast
import pathlib
import tomllib

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "sgm_jax"

# The method's stages in order: each may import the ones before it, never one after it.
STAGES = (
    "runtime",
    "data",
    "models",
    "decoding",
    "responses",
    "experts",
    "interventions",
    "weights",
    "steering",
    "judges",
    "defenses",
    "evaluate",
    "organism",
    "sweeps",
    "cli",
)


def _imported_stages(path: pathlib.Path) -> set[tuple[str, int]]:
    """The stages `path` imports (at any depth: a function's lazy import counts too), with the line."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] if node.module != "sgm_jax" else [f"sgm_jax.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] == "sgm_jax" and len(parts) > 1:
                found.add((parts[1], node.lineno))
    return found


def test_the_top_level_holds_only_stage_packages():
    entries = {p.name for p in PACKAGE.iterdir() if p.name != "__pycache__"}
    assert entries == {"__init__.py", *STAGES}
    assert all((PACKAGE / stage / "__init__.py").is_file() for stage in STAGES)


def test_no_import_runs_from_a_stage_to_a_later_one():
    upward = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE)
        if len(relative.parts) == 1:
            continue  # the top-level __init__ names the public API of every stage
        stage = relative.parts[0]
        for imported, line in sorted(_imported_stages(path)):
            assert imported in STAGES, f"{relative}:{line} imports sgm_jax.{imported}, which is no stage"
            if STAGES.index(imported) > STAGES.index(stage):
                upward.append(f"{relative}:{line} ({stage}) imports sgm_jax.{imported}")
    assert upward == []


def test_the_wheels_package_list_is_the_tree():
    """pyproject lists the packages (the data folder `models/` is mapped to one, which no search finds)."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]
    tree = {".".join(p.parent.relative_to(ROOT).parts) for p in PACKAGE.rglob("__init__.py")}
    assert set(config["packages"]) == tree | {"sgm_jax.bundled"}
    assert config["package-dir"] == {"sgm_jax.bundled": "models"}
    assert (ROOT / "models" / "organism" / "model.safetensors").is_file()
    assert sorted((ROOT / "models" / "recipes").glob("*.toml"))
