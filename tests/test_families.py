"""What every image family gets from the shared machinery: a gated model round-trips through an orbax checkpoint
exactly, and loads and runs in bfloat16 within bfloat16's rounding of the float32 logits."""

import numpy as np
import pytest

import hf_internvl
import hf_mllama
import hf_next
import hf_qwen
import sgm_jax
from sgm_jax.checkpoint import load_checkpoint, save_checkpoint
from sgm_jax.interventions import Intervention

ROWS = [("describe the picture please", [(30, 50)]), ("a red square", [(40, 40)])]
FAMILIES = {
    "qwen2.5-vl": (
        lambda d: (hf_qwen.save_qwen(d, hf_qwen.qwen_config("2.5"), seed=4), hf_qwen.save_qwen_processor(d, "2.5"))[0],
        lambda p: hf_qwen.qwen_batch(p, [(t, [hf_qwen.GRID_12x8]) for t, _ in ROWS]),
        "model.visual.blocks.1.mlp.up_proj",
    ),
    "llava-next": (
        lambda d: hf_next.save_next(d, seed=4),
        lambda p: hf_next.next_batch(p, ROWS),
        "model.vision_tower.encoder.layers.1.mlp.fc1",
    ),
    "internvl": (
        lambda d: hf_internvl.save_internvl(d, seed=4),
        lambda p: hf_internvl.internvl_batch(p, ROWS),
        "model.vision_tower.encoder.layer.1.mlp.fc1",
    ),
    "mllama": (
        lambda d: hf_mllama.save_mllama(d, seed=4),
        lambda p: hf_mllama.mllama_batch(p, ROWS),
        "model.vision_model.global_transformer.layers.0.mlp.fc1",
    ),
}


@pytest.mark.parametrize("family", list(FAMILIES))
def test_gated_checkpoint_round_trips_and_bfloat16_runs(family, tmp_path):
    save, batch_of, vision_site = FAMILIES[family]
    directory = save(str(tmp_path / "hf"))
    model, processor = sgm_jax.load_model(directory)
    batch = batch_of(processor)
    widths, rng = sgm_jax.list_sites(model), np.random.default_rng(0)
    sites = [vision_site, "model.language_model.layers.1.mlp.up_proj"]
    gated = sgm_jax.intervene(model, Intervention({s: rng.uniform(0.2, 1.5, widths[s]) for s in sites}))
    logits = np.asarray(gated(**batch))

    save_checkpoint(gated, str(tmp_path / "orbax"))
    np.testing.assert_array_equal(np.asarray(load_checkpoint(str(tmp_path / "orbax"))(**batch)), logits)

    half, _ = sgm_jax.load_model(directory, dtype="bfloat16")
    valid = batch["attention_mask"].astype(bool)
    plain = np.asarray(model(**batch))[valid]
    error = np.abs(np.asarray(half(**batch), np.float32)[valid] - plain).max()
    assert np.isfinite(error) and error <= 0.05 * np.abs(plain).max(), error  # bfloat16 keeps 8 bits of mantissa
