"""`import sgm_jax` and `sgm-jax --help` load no jax: the public names and the commands' work load on first use, so
the command line answers at once and a typo costs no second of imports."""

import ast
import json
import subprocess
import sys
import types
from pathlib import Path

import pytest

import sgm_jax

HEAVY = ("jax", "jaxlib", "flax", "numpy", "transformers", "PIL", "optax", "safetensors")


def _fresh(code: str):
    """What `code` prints as JSON, run in a new interpreter (this one has loaded everything already)."""
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(run.stdout)


def test_the_help_of_every_command_loads_no_heavy_module():
    loaded = _fresh(
        "import contextlib, io, json, sys\n"
        "from sgm_jax import cli\n"
        "with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
        "    cli.main(['--help'])\n"
        "cli.build_parser()  # every command's parser, not only the top level's\n"
        "print(json.dumps(sorted(sys.modules)))"
    )
    assert "sgm_jax.cli.sweep" in loaded
    assert [name for name in HEAVY if name in loaded] == []


def test_import_sgm_jax_loads_no_heavy_module_and_lists_every_name():
    loaded, listed = _fresh("import json, sys, sgm_jax\nprint(json.dumps([sorted(sys.modules), dir(sgm_jax)]))")
    assert [name for name in HEAVY if name in loaded] == []
    assert set(sgm_jax.__all__) <= set(listed)


def test_the_lazy_names_are_the_type_checkers_names():
    """The `TYPE_CHECKING` imports (what IDEs see), `__all__` and the lazy table name the same objects."""
    tree = ast.parse(Path(sgm_jax.__file__).read_text(encoding="utf-8"))
    (block,) = [node for node in tree.body if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING"]
    seen = {alias.name: node.module for node in block.body for alias in node.names}
    assert seen == sgm_jax._SOURCES
    assert sorted(seen) == sorted(sgm_jax.__all__)


def test_every_public_name_resolves_whichever_module_loads_first():
    """Loading the modules behind the public names first (`sgm_jax.decoding.generate`) still leaves each public name
    the function or class it names, and the stage packages read as attributes."""
    checks = _fresh(
        "import importlib, json, types\n"
        "import sgm_jax.experts.auroc, sgm_jax.decoding.generate\n"
        "import sgm_jax\n"
        "print(json.dumps({name: getattr(sgm_jax, name) is getattr(importlib.import_module(source), name)\n"
        "                  for name, source in sgm_jax._SOURCES.items()}))"
    )
    assert checks == dict.fromkeys(sgm_jax.__all__, True)
    for name in sgm_jax.__all__:
        assert getattr(sgm_jax, name) is getattr(sys.modules[sgm_jax._SOURCES[name]], name)
    assert isinstance(sgm_jax.experts, types.ModuleType) and callable(sgm_jax.load_scores)


def test_an_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no_such_name"):
        sgm_jax.no_such_name  # noqa: B018
