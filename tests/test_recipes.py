"""Every bundled recipe (package data, models/recipes/*.toml) parses strictly, its default sites name real
modules of its family, and its real checkpoint's weights fit every accelerator its mesh hints name."""

import fnmatch
import math
import re

import jax
import pytest
from flax import nnx
from jax.sharding import AbstractMesh
from transformers import (
    CLIPVisionConfig,
    InternVLConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaNextConfig,
    MllamaConfig,
    Qwen2_5_VLConfig,
    Qwen2VLConfig,
)

import hf_internvl
import hf_mllama
import hf_next
import hf_qwen
import hf_tiny
import sgm_jax
from sgm_jax.weights import recipes, sharding
from sgm_jax.weights.loading import DTYPES

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


# The real checkpoints' sizes (their config.json files), for the parameter count and the mesh-fit check.
CLIP_L_336 = dict(
    hidden_size=1024,
    intermediate_size=4096,
    num_hidden_layers=24,
    num_attention_heads=16,
    image_size=336,
    patch_size=14,
    projection_dim=768,
)
VICUNA_7B = dict(
    hidden_size=4096,
    intermediate_size=11008,
    num_hidden_layers=32,
    num_attention_heads=32,
    vocab_size=32064,
    rms_norm_eps=1e-5,
    max_position_embeddings=4096,
)
VICUNA_13B = dict(VICUNA_7B, hidden_size=5120, intermediate_size=13824, num_hidden_layers=40, num_attention_heads=40)
QWEN2_7B = dict(
    vocab_size=152064,
    hidden_size=3584,
    intermediate_size=18944,
    num_hidden_layers=28,
    num_attention_heads=28,
    num_key_value_heads=4,
    rms_norm_eps=1e-6,
    use_sliding_window=False,
    rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [16, 24, 24]},
)
QWEN_VL = dict(
    image_token_id=151655,
    video_token_id=151656,
    vision_start_token_id=151652,
    vision_end_token_id=151653,
    tie_word_embeddings=False,
)
QWEN_PATCHES = dict(patch_size=14, temporal_patch_size=2, spatial_merge_size=2)
INTERN_VIT_300M = dict(
    hidden_size=1024,
    num_hidden_layers=24,
    num_attention_heads=16,
    intermediate_size=4096,
    image_size=[448, 448],
    patch_size=[14, 14],
    attention_bias=True,
    use_qk_norm=False,
    norm_type="layer_norm",
    use_mean_pooling=True,
)
LLAMA31_ROPE = {
    "rope_type": "llama3",
    "rope_theta": 500000.0,
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192,
}

REAL_CONFIGS = {
    "llava-1.5-7b": lambda: LlavaConfig(
        vision_config=CLIPVisionConfig(**CLIP_L_336), text_config=LlamaConfig(**VICUNA_7B), image_token_index=32000
    ),
    "llava-1.5-13b": lambda: LlavaConfig(
        vision_config=CLIPVisionConfig(**CLIP_L_336), text_config=LlamaConfig(**VICUNA_13B), image_token_index=32000
    ),
    "llava-v1.6-vicuna-7b": lambda: LlavaNextConfig(
        vision_config=CLIPVisionConfig(**CLIP_L_336), text_config=LlamaConfig(**VICUNA_7B), image_token_index=32000
    ),
    "vicuna-7b-v1.5": lambda: LlamaConfig(**dict(VICUNA_7B, vocab_size=32000)),
    "qwen2-vl-7b-instruct": lambda: Qwen2VLConfig(
        vision_config=dict(depth=32, embed_dim=1280, hidden_size=3584, num_heads=16, mlp_ratio=4, **QWEN_PATCHES),
        text_config=QWEN2_7B,
        **QWEN_VL,
    ),
    "qwen2.5-vl-7b-instruct": lambda: Qwen2_5_VLConfig(
        vision_config=dict(
            depth=32,
            hidden_size=1280,
            intermediate_size=3420,
            num_heads=16,
            out_hidden_size=3584,
            window_size=112,
            fullatt_block_indexes=[7, 15, 23, 31],
            **QWEN_PATCHES,
        ),
        text_config=QWEN2_7B,
        **QWEN_VL,
    ),
    "internvl3-8b": lambda: InternVLConfig(
        vision_config=INTERN_VIT_300M,
        text_config=dict(
            QWEN2_7B, model_type="qwen2", vocab_size=151674, rope_parameters={"rope_type": "default", "rope_theta": 1e6}
        ),
        image_token_id=151667,
        tie_word_embeddings=False,
    ),
    "internvl2.5-8b-mpo": lambda: InternVLConfig(
        vision_config=INTERN_VIT_300M,
        text_config=dict(
            model_type="llama",
            vocab_size=92553,
            hidden_size=4096,
            intermediate_size=14336,
            num_hidden_layers=32,
            num_attention_heads=32,
            num_key_value_heads=8,
            rms_norm_eps=1e-5,
        ),
        image_token_id=92546,
        tie_word_embeddings=False,
    ),
    "llama-3.2-11b-vision-instruct": lambda: MllamaConfig(
        vision_config=dict(
            hidden_size=1280,
            num_hidden_layers=32,
            num_global_layers=8,
            attention_heads=16,
            intermediate_size=5120,
            intermediate_layers_indices=[3, 7, 15, 23, 30],
            vision_output_dim=7680,
            image_size=560,
            patch_size=14,
            max_num_tiles=4,
        ),
        text_config=dict(
            vocab_size=128256,
            hidden_size=4096,
            intermediate_size=14336,
            num_hidden_layers=40,
            num_attention_heads=32,
            num_key_value_heads=8,
            cross_attention_layers=[3, 8, 13, 18, 23, 28, 33, 38],
            rope_parameters=LLAMA31_ROPE,
            pad_token_id=128004,
            tie_word_embeddings=False,
        ),
        image_token_index=128256,
    ),
}

GiB = 1 << 30
# Per jax device: its memory, and how many of the cores a slice's name counts it holds (v4 and v5p chips are one
# jax device of two TensorCores, so "tpu-v4-8" is 4 devices; v5e and v6e names count chips).
ACCELERATORS = {
    "tpu-v4": (32 * GiB, 2),
    "tpu-v5e": (16 * GiB, 1),
    "tpu-v5p": (95 * GiB, 2),
    "tpu-v6e": (32 * GiB, 1),
    "gpu": (80e9, 1),  # H100
}
# Left free for activations and the KV cache: the weights may take at most 80% of a device.
HEADROOM = 0.2


class _OneKey:
    """Stands in for `nnx.Rngs` in an abstract build: shapes do not depend on keys, and each draw from an
    `nnx.Rngs` under tracing costs time proportional to the trace so far (flax 0.12), seconds for a 7B model."""

    def params(self):
        return jax.random.key(0)


def _accelerator(hint: str) -> tuple[int, int]:
    """`tpu-v5e-8` -> (bytes per device, 8 devices); `tpu-v4-8` -> (32 GiB, 4 devices); `gpu-1` -> (80 GB, 1)."""
    match = re.fullmatch(r"(.+)-(\d+)", hint)
    assert match and match[1] in ACCELERATORS, f"mesh hint {hint!r} names no known accelerator {sorted(ACCELERATORS)}"
    memory, cores_per_device = ACCELERATORS[match[1]]
    return memory, int(match[2]) // cores_per_device


def _bytes_per_device(model: nnx.Module, mesh: AbstractMesh) -> int:
    """The bytes of every parameter's shard on one device, by the logical-axis rules (arithmetic, no devices)."""
    total = 0
    for _, variable in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        axes = variable.get_metadata().get("logical_axes", (None,) * len(variable.shape))
        spec = sharding.partition_spec(axes, variable.shape, mesh)
        shard = [size // _devices_along(entry, mesh) for size, entry in zip(variable.shape, spec)]
        total += math.prod(shard) * variable.dtype.itemsize
    return total


def _devices_along(entry: str | tuple[str, ...] | None, mesh: AbstractMesh) -> int:
    """How many pieces a dimension is cut into by one entry of a PartitionSpec."""
    names = () if entry is None else (entry,) if isinstance(entry, str) else entry
    return math.prod(mesh.shape[name] for name in names)


def test_every_recipe_has_its_real_config():
    assert set(REAL_CONFIGS) == set(recipes.list_recipes())


@pytest.mark.parametrize("name", sorted(REAL_CONFIGS))
def test_recipe_mesh_hints_fit_the_real_weights(name):
    recipe = recipes.load_recipe(name)
    config = REAL_CONFIGS[name]().to_dict()
    model = nnx.eval_shape(lambda: sgm_jax.build_model(config, dtype=recipe.dtype, rngs=_OneKey()))
    count = sum(math.prod(v.shape) for _, v in nnx.to_flat_state(nnx.state(model, nnx.Param)))
    stated = float(recipe.parameters.removesuffix("B")) * 1e9
    assert abs(count - stated) <= 0.02 * stated, f"{name}: {count / 1e9:.2f}B parameters, the recipe says {stated}"
    for hint, axes in recipe.mesh.items():
        memory, devices = _accelerator(hint)
        sizes = tuple(axes.get(a, 1) for a in sharding.MESH_AXES)
        assert math.prod(sizes) == devices, f"{name}: mesh.{hint} = {axes} does not use the slice's {devices} devices"
        used = _bytes_per_device(model, AbstractMesh(sizes, sharding.MESH_AXES))
        assert used <= (1 - HEADROOM) * memory, (
            f"{name}: mesh.{hint} = {axes} puts {used / GiB:.1f} GiB of weights on each device, more than "
            f"{1 - HEADROOM:.0%} of its {memory / GiB:.0f} GiB"
        )
