"""The whole command-line pipeline on a tiny InternVL checkpoint: collect, score, intervention, generate, evaluate."""

import hf_internvl
import hf_tiny
from cli_pipeline import run_pipeline


def test_collect_score_intervention_evaluate_and_generate(tmp_path, capsys):
    directory = hf_internvl.save_internvl(str(tmp_path / "ckpt"), hf_internvl.internvl_config(tie=False), seed=11)
    data = hf_tiny.write_dataset(str(tmp_path / "data"), 20, seed=3)
    vision, projector = "model.vision_tower.encoder.layer.1.mlp.fc1", "model.multi_modal_projector"
    encoded = run_pipeline(directory, data, tmp_path, capsys, {vision: 64, projector: 64})
    assert set(encoded) == {"input_ids", "pixel_values"} and len(encoded["pixel_values"]) == 1  # one tile per image
