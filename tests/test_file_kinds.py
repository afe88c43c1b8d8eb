"""Scores files, intervention files and response stores say what they are, and each loader refuses the others."""

import json
import os
import re

import numpy as np
import pytest
from safetensors.numpy import save_file

from sgm_jax import cli
from sgm_jax.experts.scores import load_scores, save_scores, score_store, store_metadata
from sgm_jax.interventions import Intervention, load_intervention
from sgm_jax.responses.store import ResponseStore, StoreError
from sgm_jax.runtime.artifacts import INTERVENTION, KIND_KEY, RESPONSES, SCORES, file_kind

SITE = "model.language_model.layers.0.mlp.up_proj"


def _store(directory: str) -> ResponseStore:
    """A complete four-sample store with one site, written through the store's own API."""
    manifest = {
        "model": "tiny",
        "model_fingerprint": "f",
        "sites": {SITE: 3},
        "pooling": "mean",
        "tokens": "all",
        "dataset": "d",
        "dataset_hash": "h",
        "batch_size": 2,
        "sample_ids": ["a", "b", "c", "d"],
        "labels": [1, 0, 1, 0],
        "categories": [None] * 4,
    }
    store = ResponseStore.create_or_resume(directory, manifest)
    plan = [[0, 1], [2, 3]]
    responses = np.arange(12, dtype=np.float32).reshape(4, 3) * [[1], [-1], [2], [-2]]
    for index, rows in enumerate(plan):
        store.write_batch(index, np.array(rows), {SITE: responses[rows]})
    store.finalize(plan)
    return store


@pytest.fixture
def files(tmp_path):
    """One artifact of each kind, made the way the pipeline makes them (paths with a space, as users have)."""
    folder = tmp_path / "my runs"
    folder.mkdir()
    store = _store(str(folder / "store"))
    scores_path = str(folder / "scores.safetensors")
    save_scores(scores_path, score_store(store, progress=False), store_metadata(store))
    iv_path = str(folder / "iv.safetensors")
    Intervention({SITE: np.array([0.5, 1.0, 1.0])}, {"method": "aura"}).save(iv_path)
    return {SCORES: scores_path, INTERVENTION: iv_path, RESPONSES: store.directory}


def _exactly(message: str) -> str:
    return "^" + re.escape(message) + "$"


def test_each_artifact_records_its_kind(files):
    assert {kind: file_kind(path) for kind, path in files.items()} == {k: k for k in files}
    with open(os.path.join(files[RESPONSES], "manifest.json")) as f:
        assert json.load(f)["kind"] == RESPONSES
    scores, metadata = load_scores(files[SCORES])
    np.testing.assert_allclose(scores[SITE], [1.0, 1.0, 1.0])  # positives are the larger rows
    assert metadata["n_positive"] == 2 and "kind" not in metadata
    assert load_intervention(files[INTERVENTION]).metadata == {"method": "aura"}


def test_intervention_loader_refuses_a_scores_file(files):
    path = files[SCORES]
    with pytest.raises(
        ValueError,
        match=_exactly(
            f"{path} is an sgm_jax scores file (AUROC per neuron), not an intervention file: "
            f"build one with `sgm-jax intervention --scores '{path}'`"
        ),
    ):
        load_intervention(path)


def test_scores_loader_refuses_an_intervention_file_and_a_store(files):
    with pytest.raises(
        ValueError,
        match=_exactly(
            f"{files[INTERVENTION]} is an sgm_jax intervention file (alpha per neuron), not a scores file: "
            "write one from a response store with `sgm-jax score --store DIR`"
        ),
    ):
        load_scores(files[INTERVENTION])
    store = files[RESPONSES]
    with pytest.raises(
        ValueError,
        match=_exactly(
            f"{store} is an sgm_jax response store (pooled activations per sample), not a scores file: "
            f"score it with `sgm-jax score --store '{store}'`"
        ),
    ):
        load_scores(store)


def test_store_refuses_files_and_other_directories(files, tmp_path):
    hint = "collect one with `sgm-jax collect --model MODEL --data DATA --out DIR`"
    for kind, what in (
        (SCORES, "an sgm_jax scores file (AUROC per neuron)"),
        (INTERVENTION, "an sgm_jax intervention file (alpha per neuron)"),
    ):
        with pytest.raises(StoreError, match=_exactly(f"{files[kind]} is {what}, not a response store: {hint}")):
            ResponseStore(files[kind])
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(
        StoreError, match=_exactly(f"{empty} is a directory with no manifest.json, not a response store: {hint}")
    ):
        ResponseStore(str(empty))
    (empty / "manifest.json").write_text(json.dumps({"format": "orbax"}))
    with pytest.raises(StoreError, match="manifest.json has format 'orbax', not a response store"):
        ResponseStore(str(empty))
    (empty / "manifest.json").write_text("[1, 2")
    damaged = r"manifest.json is damaged \(empty, torn or not a JSON object\); rerun the collect"
    with pytest.raises(StoreError, match=damaged):
        ResponseStore(str(empty))


def test_files_sgm_jax_did_not_write_are_refused(tmp_path):
    weights = str(tmp_path / "model.safetensors")
    save_file({"lm_head.weight": np.zeros((2, 2), np.float32)}, weights, metadata={"format": "pt"})
    text = tmp_path / "notes.json"
    text.write_text("{}")
    for path, what in (
        (weights, "a safetensors file with no sgm_jax metadata (model weights?)"),
        (str(text), "a file that is not safetensors"),
    ):
        assert file_kind(path) is None
        with pytest.raises(ValueError, match=re.escape(f"{path} is {what}, not a scores file")):
            load_scores(path)
        with pytest.raises(ValueError, match=re.escape(f"{path} is {what}, not an intervention file")):
            load_intervention(path)
        with pytest.raises(StoreError, match=re.escape(f"{path} is {what}, not a response store")):
            ResponseStore(path)
    future = str(tmp_path / "future.safetensors")
    save_file({"a": np.ones(2, np.float32)}, future, metadata={KIND_KEY: "sweep"})
    with pytest.raises(ValueError, match="an sgm_jax 'sweep' file, a kind this version does not know"):
        load_intervention(future)


def test_missing_paths_name_what_was_expected(tmp_path):
    missing = str(tmp_path / "nothing")
    for load, noun in (
        (load_scores, "scores file"),
        (load_intervention, "intervention file"),
        (ResponseStore, "response store"),
    ):
        with pytest.raises(FileNotFoundError, match=_exactly(f"{missing}: no such {noun}")):
            load(missing)


def test_files_written_before_kinds_still_load_and_are_still_told_apart(files, tmp_path):
    old_scores, old_iv = str(tmp_path / "old_scores.safetensors"), str(tmp_path / "old_iv.safetensors")
    save_file({SITE: np.array([0.9, 0.5, 0.2], np.float32)}, old_scores, metadata={"sgm_jax": json.dumps({"n": 1})})
    save_file(
        {SITE: np.array([0.2, 1.0, 1.0], np.float32)},
        old_iv,
        metadata={"sgm_jax.intervention": json.dumps({"method": "aura"})},
    )
    scores, metadata = load_scores(old_scores)
    np.testing.assert_array_equal(scores[SITE], np.array([0.9, 0.5, 0.2], np.float32))
    assert metadata == {"n": 1}
    iv = load_intervention(old_iv)
    assert iv.metadata == {"method": "aura"} and iv.num_changed() == 1
    with pytest.raises(ValueError, match="is an sgm_jax scores file"):
        load_intervention(old_scores)
    with pytest.raises(ValueError, match="is an sgm_jax intervention file"):
        load_scores(old_iv)

    manifest_path = os.path.join(files[RESPONSES], "manifest.json")
    with open(manifest_path) as f:
        manifest = json.load(f)
    del manifest["kind"]
    with open(manifest_path, "w") as f:
        json.dump(manifest, f)
    assert file_kind(files[RESPONSES]) == RESPONSES
    assert ResponseStore(files[RESPONSES]).load(SITE).shape == (4, 3)


def test_cli_commands_refuse_the_wrong_kind_before_loading_a_model(files, tmp_path):
    """No checkpoint exists at --model: the wrong file must be refused before the model would be loaded."""
    data = tmp_path / "data.jsonl"
    data.write_text(json.dumps({"id": "a", "prompt": "hello", "label": 1}) + "\n")
    no_model = str(tmp_path / "no-model")
    out = str(tmp_path / "out")
    with pytest.raises(StoreError, match="is an sgm_jax scores file .*, not a response store"):
        cli.run(["score", "--store", files[SCORES], "--out", out, "--quiet"])
    with pytest.raises(ValueError, match="is an sgm_jax intervention file .*, not a scores file"):
        cli.run(["intervention", "--scores", files[INTERVENTION], "--out", out])
    with pytest.raises(ValueError, match="is an sgm_jax scores file .*, not an intervention file"):
        cli.run(["generate", "--model", no_model, "--prompt", "hi", "--intervention", files[SCORES]])
    with pytest.raises(ValueError, match="is an sgm_jax scores file .*, not an intervention file"):
        cli.run(
            [
                "evaluate",
                "--model",
                no_model,
                "--data",
                str(data),
                "--intervention",
                files[INTERVENTION],
                "--intervention",
                files[SCORES],
                "--out",
                out,
                "--quiet",
            ]
        )
    with pytest.raises(ValueError, match="is an sgm_jax intervention file .*, not a scores file"):
        cli.run(
            [
                "evaluate",
                "--model",
                no_model,
                "--data",
                str(data),
                "--intervention",
                files[INTERVENTION],
                "--scores",
                files[INTERVENTION],
                "--out",
                out,
                "--quiet",
            ]
        )
    assert not os.path.exists(out)
