"""DACO end to end on the model organism: the token store, SAE training (and its resume), the commands, and
the steering defenses in a comparison beside SGM."""

import json
import os
from importlib.resources import files

import numpy as np
import pytest
from safetensors.numpy import load_file

import sgm_jax
from sgm_jax import cli
from sgm_jax.data import read_jsonl
from sgm_jax.data.encode import encode
from sgm_jax.data.synthetic import Composition, write_dataset
from sgm_jax.models.fingerprint import model_fingerprint
from sgm_jax.runtime.errors import InputError
from sgm_jax.steering import sae_training
from sgm_jax.steering.dictionary import load_dictionary
from sgm_jax.steering.organism_concepts import write_concept_stimuli
from sgm_jax.steering.sae import SAEConfig, load_sae
from sgm_jax.steering.sae_training import TrainSettings, train_sae
from sgm_jax.steering.tokens import collect_tokens

ORGANISM = str(files("sgm_jax.bundled") / "organism")
SITE = "model.language_model.layers.1"
DATA = Composition(
    train_shape_scenes=40,
    train_word_scenes=20,
    test_shape_scenes=24,
    test_word_scenes=12,
    mcq_train=1,
    mcq_test=20,
    neutral_train=2,
    neutral_test=10,
)


@pytest.fixture(scope="module")
def organism():
    return sgm_jax.load_model(ORGANISM)


@pytest.fixture(scope="module")
def stimuli(tmp_path_factory):
    return write_concept_stimuli(str(tmp_path_factory.mktemp("concepts")), shape_scenes=60, word_scenes=30)


@pytest.fixture(scope="module")
def store(organism, stimuli, tmp_path_factory):
    model, processor = organism
    samples = read_jsonl(stimuli["stimuli.jsonl"])[:90]
    return collect_tokens(
        model, processor, samples, str(tmp_path_factory.mktemp("tokens")), site=SITE, batch_size=16, progress=False
    ), samples


def test_token_store_holds_every_real_token_and_resumes_after_damage(organism, store):
    model, processor = organism
    tokens, samples = store
    rows = np.concatenate([load_file(tokens.chunk_path(i))["rows"] for i in range(len(tokens.chunk_tokens))])
    values = np.concatenate(list(tokens.chunks()))
    per_sample = np.stack([values[rows == i].mean(0) for i in range(len(samples))])
    encoded = [encode(s, processor) for s in samples]
    assert len(values) == sum(len(e["input_ids"]) for e in encoded)
    batches = [
        {
            "input_ids": e["input_ids"][None],
            "attention_mask": np.ones((1, len(e["input_ids"]))),
            **{k: v for k, v in e.items() if k != "input_ids"},
        }
        for e in encoded[:12]
    ]
    pooled = sgm_jax.collect_responses(model, batches, sites=[SITE], pooling="mean")[SITE]
    np.testing.assert_allclose(per_sample[:12], pooled, atol=1e-5)  # the same activations by another path
    os.remove(tokens.chunk_path(1))
    with open(tokens.chunk_path(2), "r+b") as f:
        f.seek(200)
        f.write(b"\0\0\0\0")
    manifest = json.load(open(os.path.join(tokens.directory, "manifest.json")))
    manifest["complete"] = False
    json.dump(manifest, open(os.path.join(tokens.directory, "manifest.json"), "w"))
    again = collect_tokens(model, processor, samples, tokens.directory, site=SITE, batch_size=16, progress=False)
    np.testing.assert_array_equal(np.concatenate(list(again.chunks())), values)
    with pytest.raises(InputError, match="made differently"):
        collect_tokens(model, processor, samples[:10], tokens.directory, site=SITE, batch_size=16, progress=False)


def test_sae_training_lowers_the_loss_keeps_unit_atoms_and_resumes_to_the_same_result(store, tmp_path, monkeypatch):
    tokens, _ = store
    config = SAEConfig(tokens.width, 64, "topk", 8)
    settings = TrainSettings(steps=60, batch_size=128, checkpoint_every=20, log_every=10, eval_tokens=2000)
    straight = train_sae(tokens, config, settings, str(tmp_path / "a"), progress=False)
    history = straight.metadata["history"]
    assert history[-1]["loss"] < 0.5 * history[0]["loss"]
    np.testing.assert_allclose(np.linalg.norm(straight.params["W_dec"], axis=1), 1.0, atol=1e-5)
    assert 0 < straight.metadata["fraction_of_variance_explained"] <= 1
    assert 0 <= straight.metadata["dead_atoms"] <= config.atoms

    real = sae_training.batches

    def dies_at_step_47(store, batch_size, seed, start):
        for step, batch in enumerate(real(store, batch_size, seed, start), start=start):
            if step == 47:
                raise KeyboardInterrupt
            yield batch

    monkeypatch.setattr(sae_training, "batches", dies_at_step_47)
    with pytest.raises(KeyboardInterrupt):
        train_sae(tokens, config, settings, str(tmp_path / "b"), progress=False)
    monkeypatch.setattr(sae_training, "batches", real)
    resumed = train_sae(tokens, config, settings, str(tmp_path / "b"), progress=False)  # from step 40
    for name, value in straight.params.items():
        np.testing.assert_array_equal(resumed.params[name], value, err_msg=name)
    assert resumed.metadata["history"] == history
    with pytest.raises(InputError, match="another SAE training"):
        train_sae(tokens, SAEConfig(tokens.width, 32, "topk", 8), settings, str(tmp_path / "b"), progress=False)
    l1 = train_sae(tokens, SAEConfig(tokens.width, 64, "l1", l1=1e-3), settings, str(tmp_path / "c"), progress=False)
    assert l1.metadata["history"][-1]["loss"] < l1.metadata["history"][0]["loss"]


def test_daco_on_the_organism_from_the_command_line(organism, stimuli, tmp_path, capsys):
    model, _ = organism
    paths = write_dataset(str(tmp_path / "data"), seed=3, composition=DATA)
    dictionary, sae, annotation = (str(tmp_path / f"{n}.safetensors") for n in ("dictionary", "sae", "annotation"))
    site = "model.language_model.layers.3"  # the organism's concepts steer at its last block (daco_organism.py)
    cli.main(
        [
            "dictionary",
            "--model",
            ORGANISM,
            "--stimuli",
            stimuli["stimuli.jsonl"],
            "--concepts",
            stimuli["concepts.json"],
            "--site",
            site,
            "--out",
            dictionary,
        ]
    )
    assert "concept atoms" in capsys.readouterr().out
    cli.main(
        [
            "sae",
            "train",
            "--model",
            ORGANISM,
            "--data",
            paths["train.jsonl"],
            "--data",
            stimuli["stimuli.jsonl"],
            "--dictionary",
            dictionary,
            "--atoms",
            "128",
            "--k",
            "16",
            "--steps",
            "400",
            "--batch-size",
            "256",
            "--out",
            sae,
            "--quiet",
        ]
    )
    assert "fraction of variance explained" in capsys.readouterr().out
    trained = load_sae(sae, site=site)
    assert trained.metadata["init"] == "dictionary" and trained.concepts[0] == "shape:circle"
    cli.main(["sae", "annotate", "--sae", sae, "--dictionary", dictionary, "--eta", "0.6", "--out", annotation])
    assert "undesirable" in capsys.readouterr().out
    iv = sgm_jax.Intervention({"model.language_model.layers.2.mlp.down_proj": np.full(128, 0.9, np.float32)})
    iv.save(str(tmp_path / "iv.safetensors"))
    # A dictionary for SGM+DACO is read from the gated model it will steer.
    gated_dictionary = str(tmp_path / "gated-dictionary.safetensors")
    cli.main(
        ["dictionary", "--model", ORGANISM, "--intervention", str(tmp_path / "iv.safetensors")]
        + ["--stimuli", stimuli["stimuli.jsonl"], "--concepts", stimuli["concepts.json"]]
        + ["--site", site, "--out", gated_dictionary]
    )
    capsys.readouterr()
    fingerprint = load_dictionary(gated_dictionary).metadata["model_fingerprint"]
    assert fingerprint == model_fingerprint(sgm_jax.intervene(model, iv)) != model_fingerprint(model)
    out = str(tmp_path / "compare")
    command = [
        "compare",
        "--model",
        ORGANISM,
        "--data",
        paths["test.jsonl"],
        "--mcq",
        paths["mcq_test.jsonl"],
        "--neutral",
        paths["neutral.txt"],
        "--judge",
        f"lexicon:{paths['lexicon.txt']}",
        "--max-new-tokens",
        "12",
        "--batch-size",
        "16",
        "--intervention",
        str(tmp_path / "iv.safetensors"),
        "--sae",
        sae,
        "--annotation",
        annotation,
        "--daco-gamma",
        "1.0",
        "--dictionary",
        dictionary,
        "--mop-lam",
        "0.01",
        "--mop-gamma",
        "0.25",
        "--out",
        out,
        "--quiet",
    ]
    cli.main(command + [a for c in ("none", "daco", "mop", "sgm+daco") for a in ("--config", c)])
    results = json.loads(open(f"{out}/comparison.json").read())
    rows = results["comparison"]
    assert rows["daco"]["harmful_rate"] < rows["none"]["harmful_rate"]  # measured, whatever the values are
    for name, row in rows.items():
        assert row["mcq_accuracy"] is not None and row["perplexity"] > 1 and row["tokens_per_s"] > 0, name
    assert rows["daco"]["perplexity"] != rows["none"]["perplexity"]  # the steering reaches the likelihoods
    daco = results["configurations"]["sgm+daco"]
    assert daco["intervention"] and daco["defenses"][0]["name"] == "daco"
    assert daco["defenses"][0]["gamma"] == 1.0
