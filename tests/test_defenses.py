"""The defense stack: the prober (train, save, load, gate), prompt shields, ECSO, and how stages compose."""

import copy
import dataclasses
import json
import os
from importlib.resources import files

import numpy as np
import pytest
from safetensors.numpy import save_file

import sgm_jax
import sgm_jax.decoding.answering
from sgm_jax import cli
from sgm_jax.data import read_jsonl
from sgm_jax.data.encode import render
from sgm_jax.data.synthetic import Composition, write_dataset
from sgm_jax.defenses import (
    ECSO,
    AdaShieldS,
    FixedVerdicts,
    ProberGate,
    SafeCoDe,
    SystemPromptShield,
    answer_batch,
    by_stage,
    load_prober,
    train_prober,
)
from sgm_jax.defenses.ecso_prompts import CHECK_PROMPT, check_says_harmful
from sgm_jax.defenses.shields import template_has_system_role
from sgm_jax.responses.sites import site_refs
from sgm_jax.runtime.errors import InputError, OptionError

ORGANISM = str(files("sgm_jax.bundled") / "organism")
SITE = "model.language_model.layers.2.mlp.down_proj"
DATA = Composition(
    train_shape_scenes=30,
    train_word_scenes=20,
    test_shape_scenes=10,
    test_word_scenes=6,
    mcq_train=1,
    mcq_test=1,
    neutral_train=2,
    neutral_test=2,
)


@pytest.fixture(scope="module")
def organism():
    return sgm_jax.load_model(ORGANISM)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    paths = write_dataset(str(tmp_path_factory.mktemp("data")), seed=0, composition=DATA)
    return read_jsonl(paths["train.jsonl"]), read_jsonl(paths["test.jsonl"])


@pytest.fixture(scope="module")
def prober(organism, data):
    model, processor = organism
    return train_prober(model, processor, data[0], site=SITE, steps=200)


def test_prober_trains_saves_and_loads(organism, data, prober, tmp_path):
    model, processor = organism
    assert prober.metadata["train_accuracy"] >= 0.85
    path = str(tmp_path / "prober.safetensors")
    prober.save(path)
    again = load_prober(path)
    assert again.site == SITE and again.pooling == "last" and again.metadata == prober.metadata
    np.testing.assert_array_equal(again.weight, prober.weight)
    test = data[1]
    np.testing.assert_array_equal(again.flags(model, processor, test), prober.flags(model, processor, test))
    probs = prober.probabilities(model, processor, test)
    labels = np.asarray([s.label for s in test])
    assert probs[labels == 1].mean() > probs[labels == 0].mean() + 0.3  # it reads harm from the prompt


def test_prober_refuses_other_files_and_other_models(organism, prober, tmp_path):
    model, processor = organism
    other = str(tmp_path / "scores.safetensors")
    save_file({"weight": np.zeros(3, np.float32)}, other)
    with pytest.raises(InputError, match="is not a prober"):
        load_prober(other)
    narrow = dataclasses.replace(prober, weight=prober.weight[:10], mean=prober.mean[:10], scale=prober.scale[:10])
    with pytest.raises(InputError, match="trained on another model"):
        narrow.flags(model, processor, [])


def _strong_intervention(model) -> sgm_jax.Intervention:
    rng = np.random.default_rng(1)
    refs = site_refs(model)
    sites = [f"model.language_model.layers.{i}.mlp.up_proj" for i in range(4)]
    return sgm_jax.Intervention({s: rng.uniform(0.0, 0.6, refs[s].width).astype(np.float32) for s in sites})


def test_prober_gate_leaves_unflagged_rows_exactly_as_without_the_intervention(organism, data, prober):
    model, processor = organism
    test = data[1][:16]
    gated = sgm_jax.intervene(model, _strong_intervention(model))
    probs = prober.probabilities(model, processor, test)
    gate = ProberGate(dataclasses.replace(prober, threshold=float(np.median(probs))))
    flags = gate.flags(model, processor, test)
    assert 0 < flags.sum() < len(test)
    options = {"max_new_tokens": 12}
    routed = answer_batch(model, gated, processor, test, [gate], **options)
    plain = answer_batch(model, model, processor, test, [], **options)
    everywhere = answer_batch(model, gated, processor, test, [], **options)
    assert routed != plain and routed != everywhere
    for f, r, p, e in zip(flags, routed, plain, everywhere):
        assert r == (e if f else p)
    with pytest.raises(OptionError, match="none is given"):
        answer_batch(model, model, processor, test, [gate], **options)
    # the sample-level API, batched its own way, gives the same answers in the samples' order
    iv = _strong_intervention(model)
    api = sgm_jax.answer(model, processor, test, intervention=iv, defenses=[gate], batch_size=5, **options)
    assert api == routed


def test_shields_use_the_system_role_only_where_the_template_has_one(organism, data):
    _, processor = organism
    sample = dataclasses.replace(data[1][0], response=None)
    assert not template_has_system_role(processor)  # LLaVA-1.5's USER:/ASSISTANT: format
    shielded = SystemPromptShield("be kind").transform(sample, processor)
    assert shielded.system is None and shielded.prompt == f"be kind\n{sample.prompt}"
    chatml = copy.deepcopy(processor.tokenizer)
    chatml.chat_template = (
        "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] if m['content'] is string else "
        "m['content'][0]['text'] }}\n{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
    )
    assert template_has_system_role(chatml)
    with_system = SystemPromptShield("be kind").transform(sample, chatml)
    assert with_system.prompt == sample.prompt
    assert render(with_system, chatml).startswith("<|system|>be kind\n<|user|>")
    refusing = copy.deepcopy(chatml)
    refusing.chat_template = "{% if messages[0]['role'] == 'system' %}{{ raise_exception('no system') }}{% endif %}x"
    assert not template_has_system_role(refusing)
    after = AdaShieldS("check first").transform(sample, processor)
    before = AdaShieldS("check first", position="before").transform(sample, processor)
    assert after.prompt == f"{sample.prompt}\ncheck first" and before.prompt == f"check first\n{sample.prompt}"
    with pytest.raises(OptionError):
        AdaShieldS(position="middle")


def test_stacking_rules_and_order():
    safecode = SafeCoDe(FixedVerdicts(True))
    with pytest.raises(OptionError, match="at most one decode"):
        by_stage([safecode, SafeCoDe(FixedVerdicts(False))])
    with pytest.raises(OptionError, match="at most one outer"):
        by_stage([ECSO(), ECSO()])
    stages = by_stage([safecode, AdaShieldS("a", "before"), ECSO(), SystemPromptShield("b")])
    assert [d.name for d in stages["prompt"]] == ["adashield", "shield"]  # prompt rewrites keep the list's order
    assert stages["decode"] == [safecode] and stages["outer"][0].name == "ecso"


def test_self_check_reads_yes_and_no():
    assert check_says_harmful("yes") and check_says_harmful("Yes, it is.")
    assert not check_says_harmful("no") and not check_says_harmful("") and not check_says_harmful("maybe")


def test_prober_and_compare_from_the_command_line(organism, data, tmp_path, capsys):
    model, _ = organism
    directory = os.path.dirname(data[1][0].image)
    root = os.path.dirname(directory)
    iv = str(tmp_path / "iv.safetensors")
    _strong_intervention(model).save(iv)
    prober = str(tmp_path / "prober.safetensors")
    cli.main(["prober", "--model", ORGANISM, "--data", f"{root}/train.jsonl", "--site", SITE, "--out", prober])
    assert "train accuracy" in capsys.readouterr().out and load_prober(prober).site == SITE
    out = str(tmp_path / "compare")
    command = ["compare", "--model", ORGANISM, "--data", f"{root}/test.jsonl", "--intervention", iv]
    command += ["--prober", prober, "--judge", f"lexicon:{root}/lexicon.txt", "--max-new-tokens", "8"]
    configs = ["--config", "none", "--config", "sgm+safecode", "--config", "gated-sgm"]
    cli.main(command + configs + ["--out", out, "--quiet"])
    printed = capsys.readouterr().out
    results = json.loads(open(f"{out}/comparison.json").read())
    assert list(results["comparison"]) == ["none", "sgm+safecode", "gated-sgm"]
    for name, row in results["comparison"].items():
        assert 0 <= row["harmful_rate"] <= 1 and row["tokens_per_s"] > 0, name
        assert f"| {name} |" in printed
    assert results["configurations"]["sgm+safecode"]["defenses"][0]["verdicts"]["source"] == "probe"
    for name in ("comparison.md", "comparison.png"):
        assert os.path.getsize(f"{out}/{name}") > 0
    caches = {n: open(f"{out}/answers_{n}.jsonl").read() for n in results["comparison"]}
    cli.main(command + configs + ["--out", out, "--quiet"])  # a rerun resumes: nothing generated again
    assert {n: open(f"{out}/answers_{n}.jsonl").read() for n in caches} == caches
    again = json.loads(open(f"{out}/comparison.json").read())["comparison"]
    assert {n: r["harmful_rate"] for n, r in again.items()} == {
        n: r["harmful_rate"] for n, r in results["comparison"].items()
    }
    with pytest.raises(OptionError, match="not sgm, gated-sgm or a defense"):
        cli.run(command[:-6] + ["--config", "sgm+nonsense", "--out", out])


def test_ecso_replaces_only_the_answers_its_self_check_flags(organism, data):
    model, processor = organism
    test = [s for s in data[1] if s.label == 1][:4] + [s for s in data[1] if s.label == 0][:4]
    plain = answer_batch(model, model, processor, test, [], max_new_tokens=16)
    ecso = ECSO()
    checked = answer_batch(model, model, processor, test, [ecso], max_new_tokens=16)
    checks = sgm_jax.decoding.answering.plain_answers(
        model,
        processor,
        [dataclasses.replace(s, prompt=CHECK_PROMPT.format(answer=a), response=None) for s, a in zip(test, plain)],
        max_new_tokens=4,
    )
    flagged = [check_says_harmful(c) for c in checks]
    assert ecso.flagged == sum(flagged) > 0 and not all(flagged)
    for f, before, after in zip(flagged, plain, checked):
        assert (after != before) if f else (after == before)
