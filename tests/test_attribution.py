"""Which modality an expert reads: neurons built to read the image, a word or both are classified so, the
attribution file round-trips, and `sgm-jax experts` reports on the bundled organism."""

import dataclasses
import json
import os
from importlib.resources import files

import numpy as np
import pytest
from PIL import Image

import hf_tiny
import sgm_jax
from sgm_jax import cli
from sgm_jax.data import Sample, read_jsonl, write_jsonl
from sgm_jax.data.encode import encode
from sgm_jax.data.synthetic import Composition, write_dataset
from sgm_jax.decoding.batching import collate
from sgm_jax.experts.attribution import (
    CROSS_MODAL,
    EITHER,
    NOT_EXPERT,
    TEXTUAL,
    VISUAL,
    ablated_image,
    attribute,
    classify,
    load_attribution,
)
from sgm_jax.runtime.errors import InputError, OptionError

ORGANISM = str(files("sgm_jax.bundled") / "organism")
SMALL = Composition(
    train_shape_scenes=8,
    train_word_scenes=4,
    test_shape_scenes=1,
    test_word_scenes=1,
    mcq_train=1,
    mcq_test=1,
    neutral_train=1,
    neutral_test=1,
)
# The constructed model's residual directions: one only projected image features carry, one only the word "bad".
IMAGE_DIRECTION, WORD_DIRECTION = 0, 1
IMAGE_NEURON, WORD_NEURON, BOTH_NEURON = 3, 5, 7  # the neurons built to read the image, the word, and both
LAYER0, LAYER1 = "model.language_model.layers.0", "model.language_model.layers.1"
SITES = {
    IMAGE_NEURON: f"{LAYER0}.mlp.gate_proj",
    WORD_NEURON: f"{LAYER0}.mlp.up_proj",
    BOTH_NEURON: f"{LAYER1}.mlp.down_proj:in",
}
PIXELS = 28


def _dataset(directory: str, per_cell: int = 6) -> list[Sample]:
    """A 2x2 design: a bright or dark noise image, the word "bad" or "red" in one prompt; toxic iff bright and bad."""
    os.makedirs(os.path.join(directory, "images"), exist_ok=True)
    samples = []
    for bright in (True, False):
        rng = np.random.default_rng(int(bright))
        low, high = (160, 256) if bright else (0, 96)
        for word in ("bad", "red"):
            for _ in range(per_cell):
                path = os.path.join(directory, "images", f"{len(samples)}.png")
                Image.fromarray(rng.integers(low, high, (PIXELS, PIXELS, 3), dtype=np.uint8)).save(path)
                prompt, label = f"describe the {word} picture", int(bright and word == "bad")
                samples.append(Sample(id=f"s{len(samples)}", prompt=prompt, image=path, label=label))
    write_jsonl(samples, os.path.join(directory, "data.jsonl"))
    return read_jsonl(os.path.join(directory, "data.jsonl"))


def _assign(param, edit) -> None:
    """Set a parameter to `edit(its values as a numpy copy)`."""
    param[...] = np.asarray(edit(np.array(param[...])), np.float32)


def _column(kernel: np.ndarray, neuron: int, direction: int, weight: float = 1.0) -> np.ndarray:
    """`kernel` whose `neuron` reads only the residual `direction`."""
    kernel[:, neuron] = 0.0
    kernel[direction, neuron] = weight
    return kernel


def _build(model, processor, samples: list[Sample]) -> None:
    """Rewire a tiny random LLaVA so that, with the image bright (vs dark or grey) and the word "bad" (vs "red"):

    - no token embedding has the two directions but "bad" (on WORD_DIRECTION); the projector writes the image's
      brightness, measured as the difference of mean projector features of bright and dark images, on
      IMAGE_DIRECTION (positive for bright, negative for dark and for a grey image) and nothing on WORD_DIRECTION;
    - layer 0 attends to nothing (zero output projection) and writes nothing (zero down projection), so each
      position's layer-0 MLP input is its own embedding: gate neuron IMAGE_NEURON reads IMAGE_DIRECTION, up
      neuron WORD_NEURON reads WORD_DIRECTION;
    - layer 1 attends uniformly (zero queries and keys) and copies both directions into every later position, so
      its SwiGLU neuron BOTH_NEURON, gated by IMAGE_DIRECTION and reading WORD_DIRECTION, fires only on both.
    """
    lm, projector = model.model.language_model, model.model.multi_modal_projector
    bad = processor.tokenizer.convert_tokens_to_ids("bad")

    def embeddings(table):
        table[:, [IMAGE_DIRECTION, WORD_DIRECTION]] = 0.0
        table[bad, WORD_DIRECTION] = 1.0
        return table

    _assign(lm.embed_tokens.embedding, embeddings)
    site = "model.multi_modal_projector.linear_2:in"
    grey = encode(samples[0], processor, Image.new("RGB", (PIXELS, PIXELS), (128,) * 3))
    features = sgm_jax.collect_responses(
        model, [collate([encode(s, processor) for s in samples] + [grey])], sites=[site]
    )[site]
    bright = np.array([np.asarray(Image.open(s.image)).mean() > 128 for s in samples])
    direction = features[:-1][bright].mean(0) - features[:-1][~bright].mean(0)
    brightness = features @ direction
    cut = (brightness[-1] + brightness[:-1][bright].min()) / 2  # between the grey image and the dimmest bright one
    scale = 1.0 / (brightness[:-1][bright].min() - cut)

    def projection(kernel):
        kernel[:, [IMAGE_DIRECTION, WORD_DIRECTION]] = 0.0
        kernel[:, IMAGE_DIRECTION] = scale * direction
        return kernel

    def projection_bias(bias):
        bias[[IMAGE_DIRECTION, WORD_DIRECTION]] = [-scale * cut, 0.0]
        return bias

    _assign(projector.linear_2.kernel, projection)
    _assign(projector.linear_2.bias, projection_bias)

    zero, ones = np.zeros_like, np.ones_like
    first, second = lm.layers[0], lm.layers[1]
    _assign(first.self_attn.o_proj.kernel, zero)
    _assign(first.mlp.down_proj.kernel, zero)
    _assign(first.post_attention_layernorm.scale, ones)
    _assign(first.mlp.gate_proj.kernel, lambda k: _column(k, IMAGE_NEURON, IMAGE_DIRECTION))
    _assign(first.mlp.up_proj.kernel, lambda k: _column(k, WORD_NEURON, WORD_DIRECTION))

    def copy_directions(kernel):
        kernel[:] = 0.0
        kernel[IMAGE_DIRECTION, IMAGE_DIRECTION] = kernel[WORD_DIRECTION, WORD_DIRECTION] = 1.0
        return kernel

    for kernel in (second.self_attn.q_proj.kernel, second.self_attn.k_proj.kernel):
        _assign(kernel, zero)
    _assign(second.self_attn.v_proj.kernel, copy_directions)
    _assign(second.self_attn.o_proj.kernel, lambda k: np.eye(*k.shape))
    _assign(second.input_layernorm.scale, ones)
    _assign(second.post_attention_layernorm.scale, ones)
    _assign(second.mlp.gate_proj.kernel, lambda k: _column(k, BOTH_NEURON, IMAGE_DIRECTION, 8.0))
    _assign(second.mlp.up_proj.kernel, lambda k: _column(k, BOTH_NEURON, WORD_DIRECTION, 8.0))


@pytest.fixture(scope="module")
def constructed(tmp_path_factory):
    root = tmp_path_factory.mktemp("constructed")
    model, processor = sgm_jax.load_model(hf_tiny.save_tiny(root / "ckpt", 0, processor=True))
    samples = _dataset(str(root / "data"))
    _build(model, processor, samples)
    attribution = attribute(model, processor, samples, sites=list(SITES.values()), top=3, contexts=4, progress=False)
    return model, processor, samples, attribution


def test_the_rule_classifies_by_the_share_of_expertise_each_ablation_leaves():
    auroc_all = np.array([0.75, 0.75, 0.75, 0.75, 0.75, 0.59, 0.2])
    no_image = np.array([0.5, 0.75, 0.55, 0.7, 0.625, 0.5, 0.5])
    no_text = np.array([0.75, 0.3, 0.55, 0.75, 0.625, 0.5, 0.5])
    codes = classify(auroc_all, no_image, no_text, threshold=0.6, tau=0.5)
    # r = tau exactly keeps the expertise; below the threshold, and below 0.5, a neuron is no expert
    np.testing.assert_array_equal(codes, [VISUAL, TEXTUAL, CROSS_MODAL, EITHER, EITHER, NOT_EXPERT, NOT_EXPERT])


def test_constructed_neurons_are_classified_by_the_modality_they_read(constructed):
    *_, attribution = constructed
    image, word, both = (attribution.sites[SITES[n]] for n in (IMAGE_NEURON, WORD_NEURON, BOTH_NEURON))
    assert (image.classes[IMAGE_NEURON], word.classes[WORD_NEURON], both.classes[BOTH_NEURON]) == (
        VISUAL,
        TEXTUAL,
        CROSS_MODAL,
    )
    a, b, c = IMAGE_NEURON, WORD_NEURON, BOTH_NEURON
    # the descriptive views: the image neuron's expertise is all in the image tokens, the word neuron's in the text
    assert image.auroc_image[a] == image.auroc_all[a] > 0.8 and image.auroc_text[a] == 0.5
    assert word.auroc_text[b] == word.auroc_all[b] > 0.8 and word.auroc_image[b] == 0.5
    # without the image the image neuron is blind, without the word the word neuron; the neuron of both is blind
    # without either (without the image it even reads the word the wrong way round)
    assert image.auroc_no_image[a] == 0.5 and image.auroc_no_text[a] == image.auroc_all[a]
    assert word.auroc_no_text[b] == 0.5 and word.auroc_no_image[b] == word.auroc_all[b]
    assert both.auroc_all[c] == 1.0 and both.auroc_no_text[c] == 0.5 and both.auroc_no_image[c] < 0.5


def test_top_experts_come_with_the_samples_that_activate_them_most(constructed):
    *_, samples, attribution = constructed
    top = attribution.top
    assert len(top) == 3 and [e["auroc_all"] for e in top] == sorted((e["auroc_all"] for e in top), reverse=True)
    best = max(float(s.auroc_all[s.classes != NOT_EXPERT].max()) for s in attribution.sites.values())
    assert top[0]["auroc_all"] == round(best, 4)
    by_id = {s.id: s for s in samples}
    for expert in top:
        activations = [c["activation"] for c in expert["contexts"]]
        assert len(activations) == 4 and activations == sorted(activations, reverse=True)
        for context in expert["contexts"]:
            sample = by_id[context["id"]]
            assert (context["prompt"], context["image"], context["label"]) == (
                sample.prompt,
                sample.image,
                sample.label,
            )
        if expert["auroc_all"] == 1.0:  # every toxic sample activates it more than any benign one
            assert {c["label"] for c in expert["contexts"]} == {1}


def test_attribution_round_trips_and_counts_per_layer(constructed, tmp_path):
    *_, attribution = constructed
    path = str(tmp_path / "experts.safetensors")
    attribution.save(path)
    loaded = load_attribution(path)
    assert list(loaded.sites) == list(attribution.sites)
    for site, s in attribution.sites.items():
        for field in dataclasses.fields(s):
            np.testing.assert_array_equal(getattr(loaded.sites[site], field.name), getattr(s, field.name))
    assert loaded.top == attribution.top and loaded.metadata == attribution.metadata
    counts = loaded.counts()
    assert list(counts) == ["0", "1"]
    layer0 = np.concatenate([attribution.sites[SITES[n]].classes for n in (IMAGE_NEURON, WORD_NEURON)])
    assert counts["0"]["visual"] == int((layer0 == VISUAL).sum()) >= 1
    assert sum(loaded.totals().values()) == sum(int((s.classes >= 0).sum()) for s in attribution.sites.values())
    with pytest.raises(InputError, match="not an expert attribution: make one with `sgm-jax experts`"):
        load_attribution(os.path.join(hf_tiny.save_tiny(tmp_path / "ckpt", 0), "model.safetensors"))


def test_ablated_images_have_the_size_and_none_of_the_content(constructed):
    _, _, samples, _ = constructed
    blank = np.asarray(ablated_image(samples[0], "blank", seed=0, index=0))
    assert blank.shape == (PIXELS, PIXELS, 3) and (blank == 128).all()
    noise = [np.asarray(ablated_image(samples[0], "noise", seed=s, index=i)) for s, i in ((0, 0), (0, 0), (0, 1))]
    np.testing.assert_array_equal(noise[0], noise[1])
    assert not np.array_equal(noise[0], noise[2]) and abs(noise[0].mean() - 128) < 10


def test_refusals_name_the_problem(constructed):
    model, processor, samples, _ = constructed
    benign = [s for s in samples if s.label == 0]
    with pytest.raises(InputError, match=r"^AUROC is undefined: all 18 samples have label 0"):
        attribute(model, processor, benign, progress=False)
    with pytest.raises(InputError, match=r"^1 samples have no image \(first: \['s0'\]\)"):
        attribute(model, processor, [dataclasses.replace(samples[0], image=None)] + samples[1:], progress=False)
    with pytest.raises(OptionError, match=r"threshold must be in \(0.5, 1\]"):
        attribute(model, processor, samples, threshold=0.5, progress=False)
    with pytest.raises(OptionError, match="image_ablation='erase'"):
        attribute(model, processor, samples, image_ablation="erase", progress=False)


@pytest.fixture(scope="module")
def organism_data(tmp_path_factory):
    return write_dataset(str(tmp_path_factory.mktemp("mm_toxic_qa")), seed=0, composition=SMALL)


def test_experts_command_reports_on_the_organism(organism_data, tmp_path, capsys):
    out = str(tmp_path / "experts")
    cli.run(["experts", "--model", ORGANISM, "--data", organism_data["train.jsonl"], "--out", out, "--top", "2"])
    assert "experts (AUROC >= 0.6) of 3264 neurons" in capsys.readouterr().out
    summary = json.loads(open(os.path.join(out, "experts.json")).read())
    loaded = load_attribution(os.path.join(out, "experts.safetensors"))
    assert summary["totals"] == loaded.totals() and summary["counts"] == loaded.counts()
    assert list(summary["counts"]) == ["0", "1", "2", "3"] and sum(summary["totals"].values()) > 0
    assert len(summary["top"]) == 2 and all(len(e["contexts"]) == 5 for e in summary["top"])
    report = open(os.path.join(out, "experts.md"), encoding="utf-8").read()
    for line in ("| layer 0 |", "| layer 3 |", "| **all** |", "![experts per layer](experts.png)", "### 2. `"):
        assert line in report
    with open(os.path.join(out, "experts.png"), "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_experts_command_refuses_one_class_in_one_line(organism_data, tmp_path, capsys):
    benign = [s for s in read_jsonl(organism_data["train.jsonl"]) if s.label == 0]
    path = os.path.join(os.path.dirname(organism_data["train.jsonl"]), "benign.jsonl")
    write_jsonl(benign, path)
    with pytest.raises(SystemExit) as exit_:
        cli.main(["experts", "--model", ORGANISM, "--data", path, "--out", str(tmp_path / "x")])
    assert exit_.value.code == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("sgm-jax experts: error: AUROC is undefined") and "\n" not in err
    assert not (tmp_path / "x").exists()


def test_every_experts_option_is_documented():
    parser = cli.build_parser()._subparsers._group_actions[0].choices["experts"]
    for action in parser._actions:
        assert action.help, action.dest
