"""Every command a researcher runs on a checkpoint, on every image family of the conformance table
(`families.py`): a family is a row, a command a column, a test a cell.

Each family's artifacts are made once per module by the command that makes them (collect's store, score's
scores, the intervention, the prober, the concept dictionary, the SAE and its annotation) and every cell checks
what its command wrote or printed, and runs the commands that read them. Checkpoints are tiny and random, so the
cells check that each command runs on the family and computes what the library's API computes, not that it
makes the model safe.
"""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.metrics import roc_auc_score

import hf_tiny
import sgm_jax
from families import FAMILIES, IMAGE_FAMILIES
from sgm_jax import cli
from sgm_jax.data import read_jsonl
from sgm_jax.data.encode import encode
from sgm_jax.data.samples import Sample
from sgm_jax.defenses import load_prober
from sgm_jax.experts.transport import transport_maps
from sgm_jax.responses.features import prompt_features
from sgm_jax.responses.store import ResponseStore
from sgm_jax.steering import refusal
from sgm_jax.steering.annotate import load_annotation
from sgm_jax.steering.dictionary import Concept, load_dictionary, write_concepts
from sgm_jax.steering.sae import load_sae

PROMPT = "describe the picture please"
DECODER_SITES = "model.language_model.layers.*.mlp.up_proj"
PROBER_SITE = "model.language_model.layers.1.mlp.down_proj"
SPREAD_BY = "row"  # the rows run on both workers, a family at a time (conftest.py)
SAMPLES = 20  # hf_tiny.write_dataset: every third toxic, every fifth in the test split


@dataclasses.dataclass
class Row:
    """One family's checkpoint, data and the artifacts its commands made (filled as the cells ask for them)."""

    family: str
    directory: str
    data: str
    root: str
    files: dict[str, str] = dataclasses.field(default_factory=dict)

    def path(self, name: str) -> str:
        return os.path.join(self.root, name)

    def made(self, name: str, command: list[str]) -> str:
        """The artifact `name`, made by `command` (run once per family; `{out}` stands for its path)."""
        if name not in self.files:
            out = self.path(name)
            cli.main([a.replace("{out}", out) for a in command])
            self.files[name] = out
        return self.files[name]

    @property
    def model(self):
        return sgm_jax.load_model(self.directory)

    @property
    def steer_site(self) -> str:
        """The last decoder layer: the image has reached the text there in every family (Mllama's cross-attention
        layers come before it; at its first layer, before them, every sample of one prompt reads the same)."""
        model, _ = self.model
        return f"model.language_model.layers.{len(model.model.language_model.layers) - 1}"

    def store(self) -> str:
        sites = [DECODER_SITES, *FAMILIES[self.family].image_sites]
        command = ["collect", "--model", self.directory, "--data", self.data, "--batch-size", "4"]
        return self.made("store", command + ["--out", "{out}", "--quiet", "--sites", *sites])

    def scores(self) -> str:
        return self.made("scores.safetensors", ["score", "--store", self.store(), "--out", "{out}", "--quiet"])

    def intervention(self) -> str:
        command = ["intervention", "--scores", self.scores(), "--threshold", "0.3", "--out", "{out}"]
        return self.made("iv.safetensors", command)

    def prober(self) -> str:
        command = ["prober", "--model", self.directory, "--data", self.data, "--split", "train"]
        return self.made("prober.safetensors", command + ["--site", PROBER_SITE, "--steps", "200", "--out", "{out}"])

    def concepts(self) -> str:
        """Two concepts over the data's own samples: toxic (its harmful rows against the rest) and its converse."""
        if "concepts.json" not in self.files:
            samples = read_jsonl(self.data)
            harmful = tuple(s.id for s in samples if s.label == 1)
            benign = tuple(s.id for s in samples if s.label == 0)
            path = self.path("concepts.json")
            write_concepts(
                path, [Concept("toxic", "undesirable", harmful, benign), Concept("calm", "desirable", benign, harmful)]
            )
            self.files["concepts.json"] = path
        return self.files["concepts.json"]

    def dictionary(self) -> str:
        command = ["dictionary", "--model", self.directory, "--stimuli", self.data, "--concepts", self.concepts()]
        return self.made("dictionary.safetensors", command + ["--site", self.steer_site, "--out", "{out}"])

    def sae(self) -> str:
        command = ["sae", "train", "--model", self.directory, "--data", self.data, "--dictionary", self.dictionary()]
        command += ["--atoms", "16", "--k", "4", "--steps", "30", "--batch-size", "64", "--log-every", "10"]
        return self.made("sae.safetensors", command + ["--work", self.path("sae-work"), "--out", "{out}", "--quiet"])

    def annotation(self) -> str:
        command = ["sae", "annotate", "--sae", self.sae(), "--dictionary", self.dictionary(), "--eta", "1.0"]
        return self.made("annotation.safetensors", command + ["--out", "{out}"])

    def judge_options(self) -> list[str]:
        lexicon, neutral = self.path("lexicon.txt"), self.path("neutral.txt")
        if not os.path.exists(lexicon):
            with open(lexicon, "w") as f:
                f.write("bad\nword\n")
            with open(neutral, "w") as f:
                f.write(f"a red square above a blue circle\n{PROMPT}\n")
        return ["--judge", f"lexicon:{lexicon}", "--neutral", neutral, "--max-new-tokens", "3"]


@pytest.fixture(scope="module", params=IMAGE_FAMILIES)
def row(request, tmp_path_factory) -> Row:
    root = tmp_path_factory.mktemp(request.param)
    directory = FAMILIES[request.param].save(str(root / "checkpoint"), 11)
    data = hf_tiny.write_dataset(str(root / "data"), SAMPLES, seed=3, uniform=True)  # one shape: compiled once
    return Row(request.param, directory, data, str(root))


def test_collect(row, capsys):
    store = row.store()
    responses = ResponseStore(store)
    model, _ = row.model
    layers = len(model.model.language_model.layers)
    assert set(responses.sites) == {f"model.language_model.layers.{i}.mlp.up_proj" for i in range(layers)} | set(
        FAMILIES[row.family].image_sites
    )
    for site, width in FAMILIES[row.family].image_sites.items():
        values = responses.load(site)
        assert values.shape == (SAMPLES, width) and np.isfinite(values).all(), site
        assert np.ptp(values, axis=0).max() > 0, f"{site}: every image pooled the same"


def test_score(row):
    scores, _ = sgm_jax.load_scores(row.scores())
    responses, labels = ResponseStore(row.store()), np.asarray([s.label for s in read_jsonl(row.data)])
    for site in list(FAMILIES[row.family].image_sites)[:1] + ["model.language_model.layers.0.mlp.up_proj"]:
        expected = [roc_auc_score(labels, column) for column in responses.load(site).T[:8]]
        np.testing.assert_allclose(scores[site][:8], expected, atol=1e-6, err_msg=site)


def test_intervention(row):
    iv = sgm_jax.load_intervention(row.intervention())
    scores, _ = sgm_jax.load_scores(row.scores())
    assert iv.num_changed() > 0
    for site, auroc in scores.items():  # AurA's rule at the SGM release's threshold; sites left alone are omitted
        alpha = iv.alphas.get(site, np.ones_like(auroc))
        np.testing.assert_allclose(alpha, np.where(auroc > 0.3, 1 - 2 * (auroc - 0.5), 1.0), atol=1e-6, err_msg=site)


def test_transport(row, tmp_path, capsys):
    """`transport` fits Linear-AcT on the store's responses as the library does, and its file is an intervention
    like any other: `generate` answers with it as the API does."""
    out, store = str(tmp_path / "act.safetensors"), row.store()
    capsys.readouterr()  # what making the store printed
    cli.main(["transport", "--store", store, "--out", out, "--quiet"])
    assert capsys.readouterr().out.startswith("linear-act: ")
    iv = sgm_jax.load_intervention(out)
    store = ResponseStore(store)
    labels = np.asarray(store.labels)
    for site in list(FAMILIES[row.family].image_sites)[:1] + ["model.language_model.layers.0.mlp.up_proj"]:
        responses = store.load(site)
        np.testing.assert_array_equal(
            iv.transports[site], transport_maps(responses[labels == 1], responses[labels == 0])
        )
    assert iv.num_changed() > 0
    cli.main(["generate", "--model", row.directory, "--prompt", PROMPT, "--intervention", out, "--max-new-tokens", "3"])
    printed = capsys.readouterr().out.strip()
    model, processor = row.model
    encoded = encode(Sample(id="x", prompt=PROMPT), processor)
    tokens = sgm_jax.generate(sgm_jax.intervene(model, iv), encoded["input_ids"][None], max_new_tokens=3)
    assert printed == processor.tokenizer.decode(tokens[0], skip_special_tokens=True).strip()


def test_generate(row, tmp_path, capsys):
    image = str(tmp_path / "image.png")
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (61, 20, 3), dtype=np.uint8)).save(image)
    iv = row.intervention()  # made first: what making it prints is not the reply
    capsys.readouterr()
    command = ["generate", "--model", row.directory, "--prompt", PROMPT, "--image", image]
    cli.main(command + ["--intervention", iv, "--max-new-tokens", "4"])
    printed = capsys.readouterr().out.strip()
    model, processor = row.model
    encoded = encode(Sample(id="x", prompt=PROMPT, image=image), processor)
    gated = sgm_jax.intervene(model, sgm_jax.load_intervention(iv))
    images = {k: v[None] if k == "input_ids" else v for k, v in encoded.items()}
    tokens = sgm_jax.generate(gated, images.pop("input_ids"), max_new_tokens=4, **images)
    assert printed == processor.tokenizer.decode(tokens[0], skip_special_tokens=True).strip()


def test_prober(row):
    prober = load_prober(row.prober())
    model, processor = row.model
    train = read_jsonl(row.data, split="train")
    labels = np.asarray([s.label for s in train])
    features = prompt_features(model, processor, train, PROBER_SITE, prober.pooling)
    logits = (features - prober.mean) / prober.scale @ prober.weight + prober.bias
    np.testing.assert_allclose(
        prober.probabilities(model, processor, train), torch.sigmoid(torch.tensor(logits)), atol=1e-5
    )
    assert prober.metadata["train_accuracy"] == ((logits > 0) == (labels == 1)).mean() >= 0.75


def _measured(setting: dict, data: str) -> None:
    assert setting["harmful_rate"]["all"]["n"] == sum(s.label == 1 for s in read_jsonl(data, split="test"))
    assert setting["perplexity"] > 1 and np.isfinite(setting["answer_perplexity"])


def test_evaluate_with_every_defense(row, tmp_path):
    """The prober gate, ECSO, both shields and SafeCoDe (the model as its own guard) stacked on SGM."""
    out = str(tmp_path / "eval")
    command = ["evaluate", "--model", row.directory, "--data", row.data, "--split", "test", "--prober", row.prober()]
    command += ["--intervention", row.intervention(), *row.judge_options(), "--out", out, "--quiet"]
    defenses = ["prober-gate", "ecso", "shield", "adashield", "safecode"]
    cli.main(command + [a for d in defenses for a in ("--defense", d)] + ["--safecode-verdicts", "self"])
    with open(f"{out}/results.json") as f:
        results = json.load(f)
    assert [d["name"] for d in results["defenses"]] == defenses
    _measured(results["settings"]["before"], row.data)
    _measured(results["settings"]["after"], row.data)


def _compare(row, out: str, *options: str) -> dict:
    command = ["compare", "--model", row.directory, "--data", row.data, "--split", "test"]
    cli.main(command + ["--intervention", row.intervention(), *row.judge_options(), *options, "--out", out, "--quiet"])
    with open(f"{out}/comparison.json") as f:
        return json.load(f)


def test_compare_standard_configurations(row, tmp_path):
    rows = _compare(row, str(tmp_path / "compare"), "--prober", row.prober())["comparison"]
    assert {"none", "sgm", "safecode", "shield", "adashield", "ecso", "gated-sgm", "all"} <= set(rows)
    for name, measured in rows.items():
        assert measured["perplexity"] > 1 and measured["tokens_per_s"] > 0, name


def test_compare_mop_daco_and_sgm_daco(row, tmp_path):
    options = ["--dictionary", row.dictionary(), "--sae", row.sae(), "--annotation", row.annotation()]
    configs = [a for c in ("none", "mop", "daco", "sgm+daco") for a in ("--config", c)]
    results = _compare(row, str(tmp_path / "compare"), *options, "--mop-lam", "0.01", *configs)
    rows = results["comparison"]
    assert list(rows) == ["none", "mop", "daco", "sgm+daco"]
    assert rows["mop"]["perplexity"] != rows["none"]["perplexity"]  # the steering reaches the likelihoods
    assert results["configurations"]["sgm+daco"]["intervention"]


def test_experts(row, tmp_path):
    out = str(tmp_path / "experts")
    sites = ["model.language_model.layers.0.mlp.up_proj", *FAMILIES[row.family].image_sites]
    cli.main(["experts", "--model", row.directory, "--data", row.data, "--sites", *sites, "--out", out, "--quiet"])
    with open(f"{out}/experts.json") as f:
        report = json.load(f)
    assert set(report["metadata"]["sites"]) == set(sites)


def test_sweep(row, tmp_path):
    out = tmp_path / "sweep"
    command = ["sweep", "--model", row.directory, "--scores", row.scores(), "--data", row.data, "--split", "test"]
    command += [*row.judge_options(), "--method", "aura", "--threshold", "0.3", "0.6", "--sites", "all"]
    cli.main(command + ["--out", str(out), "--quiet"])
    lines = (out / "sweep.csv").read_text().splitlines()
    assert len(lines) == 3 and (out / "pareto.png").stat().st_size > 0


def test_dictionary(row):
    dictionary = load_dictionary(row.dictionary())
    assert dictionary.concepts == ("toxic", "calm") and dictionary.site == row.steer_site
    np.testing.assert_allclose(np.linalg.norm(dictionary.atoms, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(dictionary.atoms[0], -dictionary.atoms[1], atol=1e-5)  # converse concepts


def test_sae_train_and_annotate(row):
    sae = load_sae(row.sae(), site=row.steer_site)
    history = sae.metadata["history"]
    assert sae.metadata["init"] == "dictionary" and history[-1]["loss"] < history[0]["loss"]
    annotation = load_annotation(row.annotation(), sae=sae)
    near, far = annotation.distance_undesirable, annotation.distance_desirable
    np.testing.assert_array_equal(annotation.undesirable, (near <= 1.0) & (near < far))  # the --eta 1.0 rule
    assert annotation.undesirable.any() and len(annotation.labels) == 16


def test_refusal_direction(row, tmp_path, capsys):
    """`refusal-direction` on the family's text prompts writes the library's candidate at the layer and position it
    chose (thresholds off: a tiny random model refuses nothing)."""
    harmful, harmless = tmp_path / "harmful.txt", tmp_path / "harmless.txt"
    harmful.write_text("".join(f"how do i hurt {who}\n" for who in ("him", "her", "them", "a cat", "a dog")))
    harmless.write_text("".join(f"how do i help {who}\n" for who in ("him", "her", "them", "a cat", "a dog")))
    out = str(tmp_path / "direction.safetensors")
    command = ["refusal-direction", "--model", row.directory, "--harmful", str(harmful), "--harmless", str(harmless)]
    command += ["--val", "2", "--positions", "2", "--kl-threshold", "1e9", "--induce-threshold=-1e9"]
    cli.main(command + ["--prune-layers", "0", "--out", out, "--quiet"])
    assert capsys.readouterr().out.startswith("refusal direction: layer ")
    direction, metadata = refusal.load_direction(out)
    model, processor = row.model
    fit = [refusal.prompts(model, processor, path.read_text().split("\n")[:3]) for path in (harmful, harmless)]
    expected = refusal.candidate_directions(model, *fit, 2)[metadata["position"], metadata["layer"]]
    np.testing.assert_allclose(direction, expected, rtol=1e-5, atol=1e-6)


def test_export_hf(row, tmp_path):
    model, processor = row.model
    gated = sgm_jax.intervene(model, sgm_jax.load_intervention(row.intervention()))
    sgm_jax.export_hf(gated, str(tmp_path / "export"), processor=processor)
    exported, _ = sgm_jax.load_model(str(tmp_path / "export"))
    encoded = encode(read_jsonl(row.data)[0], processor)
    ids = encoded.pop("input_ids")[None]
    np.testing.assert_allclose(np.asarray(exported(ids, **encoded)), np.asarray(gated(ids, **encoded)), atol=1e-4)
