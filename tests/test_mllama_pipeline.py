"""The whole command-line pipeline on a tiny Llama-3.2-Vision checkpoint: collect, score, intervention, generate,
evaluate."""

import hf_mllama
import hf_tiny
from cli_pipeline import run_pipeline


def test_collect_score_intervention_evaluate_and_generate(tmp_path, capsys):
    directory = hf_mllama.save_mllama(str(tmp_path / "ckpt"), seed=11)
    data = hf_tiny.write_dataset(str(tmp_path / "data"), 20, seed=3)
    vision, projector = "model.vision_model.global_transformer.layers.1.mlp.fc1", "model.multi_modal_projector"
    encoded = run_pipeline(directory, data, tmp_path, capsys, {vision: 64, projector: 64})
    assert set(encoded) == {
        "input_ids",
        "pixel_values",
        "aspect_ratio_ids",
        "aspect_ratio_mask",
    }  # the cross mask is derived
