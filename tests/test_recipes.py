"""Every bundled recipe (package data, sgm_jax/recipes/*.toml) parses strictly, and its default sites name real
modules of its family."""

import fnmatch

import pytest
from flax import nnx
from transformers import LlamaConfig

import hf_internvl
import hf_mllama
import hf_next
import hf_qwen
import hf_tiny
import sgm_jax
from sgm_jax import recipes
from sgm_jax.loading import DTYPES

TINY_CONFIGS = {
    "llava": lambda: hf_tiny.llava_config().to_dict(),
    "llama": lambda: LlamaConfig(
        hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2, vocab_size=50
    ).to_dict(),
    "internvl": lambda: hf_internvl.internvl_config().to_dict(),
    "mllama": lambda: hf_mllama.mllama_config().to_dict(),
    "llava_next": lambda: hf_next.next_config().to_dict(),
    "qwen2_vl": lambda: hf_qwen.qwen_config("2").to_dict(),
    "qwen2_5_vl": lambda: hf_qwen.qwen_config("2.5").to_dict(),
}


def test_the_promised_recipes_exist():
    promised = {"llava-1.5-7b", "llava-1.5-13b", "vicuna-7b-v1.5", "qwen2-vl-7b-instruct", "qwen2.5-vl-7b-instruct"}
    promised |= {"llava-v1.6-vicuna-7b", "internvl3-8b", "internvl2.5-8b-mpo"}
    promised |= {"llama-3.2-11b-vision-instruct"}
    assert promised <= set(recipes.list_recipes())


def test_qwen_recipes_fix_one_resolution_whose_windows_tile():
    for name in ("qwen2-vl-7b-instruct", "qwen2.5-vl-7b-instruct"):
        size = recipes.load_recipe(name).image_size
        assert size is not None and size % 112 == 0, (name, size)
    assert recipes.load_recipe("llava-1.5-7b").image_size is None


@pytest.mark.parametrize("name", recipes.list_recipes())
def test_recipe_is_well_formed_and_its_sites_exist(name):
    recipe = recipes.load_recipe(name)
    assert recipe.name == name and recipe.dtype in DTYPES
    model = nnx.eval_shape(lambda: sgm_jax.build_model(TINY_CONFIGS[recipe.family]()))
    modules = [".".join(map(str, path)) for path, node in nnx.iter_graph(model) if isinstance(node, nnx.Module)]
    for pattern in recipe.default_sites:
        assert fnmatch.filter(modules, pattern), f"{name}: site pattern {pattern} matches no module"


def test_malformed_recipe_is_named(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text(
        'name = "bad"\nhf_id = "x/y"\nfamily = "gpt2"\ndtype = "float32"\nparameters = "1"\n'
        '[sites]\ndefault = []\n[prompt]\nformat = "{prompt}"\nuse_chat_template = false\n'
        '[mesh]\ncolour = "blue"\n'
    )
    with pytest.raises(recipes.RecipeError, match="family='gpt2'"):
        recipes.load_recipe(str(path))
    path.write_text(path.read_text().replace("gpt2", "llama"))
    with pytest.raises(recipes.RecipeError, match="mesh.colour"):
        recipes.load_recipe(str(path))
    path.write_text(path.read_text().replace('colour = "blue"', "") + "[images]\ncanonical_size = 0\n")
    with pytest.raises(recipes.RecipeError, match="images.canonical_size"):
        recipes.load_recipe(str(path))
    path.write_text(path.read_text().replace("canonical_size = 0", "size = 448"))
    with pytest.raises(recipes.RecipeError, match=r"unknown fields \['images.size'\]"):
        recipes.load_recipe(str(path))
    with pytest.raises(FileNotFoundError, match="llava-1.5-7b"):
        recipes.load_recipe("llava-9")
