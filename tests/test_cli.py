"""`sgm-jax collect` + `sgm-jax score` from the command line on a tiny checkpoint and a JSONL file."""

import subprocess
import sys

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

import hf_tiny
from sgm_jax import cli
from sgm_jax.scores import load_scores
from sgm_jax.store import ResponseStore


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    directory = str(root / "ckpt")
    hf_tiny.save_llava(directory, hf_tiny.llava_config(), seed=8)
    hf_tiny.save_processor(directory)
    return directory, hf_tiny.write_dataset(str(root / "data"), 30, seed=2)


def test_collect_then_score_from_the_command_line(checkpoint, tmp_path, capsys):
    directory, data = checkpoint
    store_dir, scores_path = str(tmp_path / "store"), str(tmp_path / "scores.safetensors")
    cli.main(["collect", "--model", directory, "--data", data, "--split", "train", "--batch-size", "5",
              "--out", store_dir, "--quiet"])
    assert "24 samples x 6 sites" in capsys.readouterr().out  # default sites: gate/up/down in 2 layers
    cli.main(["score", "--store", store_dir, "--out", scores_path, "--quiet"])
    assert "AUROC of" in capsys.readouterr().out

    store = ResponseStore(store_dir)
    scores, metadata = load_scores(scores_path)
    assert set(scores) == set(store.sites)
    assert metadata["pooling"] == "mean" and metadata["n_positive"] + metadata["n_negative"] == 24
    assert metadata["model_fingerprint"] == store.manifest["model_fingerprint"]
    labels = np.asarray(store.labels)
    for site in store.sites:
        responses = store.load(site)
        expected = [roc_auc_score(labels, responses[:, j]) for j in range(responses.shape[1])]
        np.testing.assert_allclose(scores[site], expected, atol=1e-6, err_msg=site)


def test_sites_command_lists_names_and_widths(checkpoint, capsys):
    cli.main(["sites", "--model", checkpoint[0], "model.language_model.layers.1.mlp.*"])
    lines = capsys.readouterr().out.splitlines()
    assert "model.language_model.layers.1.mlp.down_proj:in\t56" in lines
    assert all(line.startswith("model.language_model.layers.1.mlp") for line in lines)


def test_every_option_is_documented():
    for command in ("collect", "score", "sites", "generate"):
        out = subprocess.run([sys.executable, "-m", "sgm_jax.cli", command, "--help"], capture_output=True,
                             text=True, check=True).stdout
        parser = next(a for a in cli.build_parser()._subparsers._group_actions[0].choices.items() if a[0] == command)[1]
        for action in parser._actions:
            for flag in action.option_strings:
                assert flag in out, (command, flag)
            assert action.help, (command, action.dest)
