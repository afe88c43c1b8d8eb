"""Sweeps on the model organism: K settings under one compile equal K separate evaluations, a sweep resumes
without losing or repeating a setting, the grid and its site groups, the Pareto front, and the command."""

import csv
import json
from importlib.resources import files

import numpy as np
import pytest

import sgm_jax
from sgm_jax import cli
from sgm_jax.data import read_jsonl
from sgm_jax.data.encode import encode
from sgm_jax.data.samples import write_jsonl
from sgm_jax.data.synthetic import Composition, write_dataset
from sgm_jax.decoding.batching import collate, pad_token_id
from sgm_jax.decoding.generate import decode_arguments, decode_swept
from sgm_jax.experts.scores import save_scores, score_store, store_metadata
from sgm_jax.interventions import GateStack
from sgm_jax.judges import LexiconJudge
from sgm_jax.responses.collect import collect_to_store
from sgm_jax.responses.sites import default_sites
from sgm_jax.runtime.compiles import count_compiles
from sgm_jax.runtime.errors import OptionError
from sgm_jax.sweeps import run as sweep_run
from sgm_jax.sweeps.evaluation import SettingsEvaluator, SweepOptions
from sgm_jax.sweeps.pareto import pareto_front
from sgm_jax.sweeps.settings import Setting, grid, intervention_for, read_settings, site_groups

ORGANISM = str(files("sgm_jax.bundled") / "organism")
DATA = Composition(
    train_shape_scenes=60,
    train_word_scenes=30,
    test_shape_scenes=12,
    test_word_scenes=6,
    mcq_train=1,
    mcq_test=12,
    neutral_train=2,
    neutral_test=8,
)


@pytest.fixture(scope="module")
def organism():
    return sgm_jax.load_model(ORGANISM)


@pytest.fixture(scope="module")
def setup(organism, tmp_path_factory):
    model, processor = organism
    root = tmp_path_factory.mktemp("sweep")
    paths = write_dataset(str(root / "data"), seed=5, composition=DATA)
    sites = default_sites(model) + ["model.vision_tower.encoder.layers.*.mlp.fc1"]
    store = collect_to_store(
        model,
        processor,
        read_jsonl(paths["train.jsonl"]),
        str(root / "store"),
        sites=sites,
        batch_size=32,
        progress=False,
    )
    scores = score_store(store, progress=False)
    save_scores(str(root / "scores.safetensors"), scores, store_metadata(store))
    test = read_jsonl(paths["test.jsonl"])
    samples = [s for s in test if s.label == 1][:12] + [s for s in test if s.label == 0][:6]
    samples += read_jsonl(paths["mcq_test.jsonl"])[:6]
    with open(paths["neutral.txt"], encoding="utf-8") as f:
        neutral = [line.strip() for line in f if line.strip()][:6]
    return root, paths, scores, samples, neutral, LexiconJudge(paths["lexicon.txt"])


SETTINGS = [
    Setting("aura", "sgm", threshold=0.5),
    Setting("damp", "all", k=200, alpha=0.3, strength=1.5),
    Setting("det0", "vision", k=40),  # gates in the vision tower only
    Setting("det0", "sgm", k=0),  # no neuron changed: the plain model
]


def test_a_sweep_equals_separate_evaluations(organism, setup):
    model, processor = organism
    _, _, scores, samples, neutral, judge = setup
    groups = site_groups(model, scores, sorted({s.sites for s in SETTINGS}))
    evaluator = SettingsEvaluator(
        model,
        processor,
        samples,
        neutral,
        judge,
        sites=list(scores),
        options=SweepOptions(max_new_tokens=12, batch_size=8, chunk_size=len(SETTINGS)),
    )
    ivs = [intervention_for(s, scores, groups) for s in SETTINGS]
    swept = evaluator.measure(ivs, keep_answers=True)
    separate = evaluator.measure(ivs, vmapped=False, keep_answers=True)  # each on its own `intervene`d model
    for setting, a, b in zip(SETTINGS, swept, separate):
        assert a.pop("answers") == b.pop("answers"), setting.key  # the same tokens, setting by setting
        assert a.keys() == b.keys()
        for name in a:
            assert a[name] == pytest.approx(b[name], rel=1e-5, abs=1e-6), (setting.key, name)
    assert swept[0]["harmful_rate"] < swept[-1]["harmful_rate"]  # SGM is safer than no change, measured
    plain = sgm_jax.answer(model, processor, [s for s in samples if not s.options], max_new_tokens=12)
    assert separate[-1]["distinct_2"] == swept[-1]["distinct_2"]
    answers = evaluator.measure(ivs[-1:], keep_answers=True)[0]["answers"]
    assert answers == plain  # k = 0 changes nothing: the plain model's answers


def test_a_sweep_compiles_once_per_shape_and_resumes_without_loss_or_repeats(organism, setup, tmp_path, monkeypatch):
    model, processor = organism
    _, _, scores, samples, neutral, judge = setup
    groups = site_groups(model, scores, ["sgm", "layers:0-1"])
    options = SweepOptions(max_new_tokens=8, batch_size=8, chunk_size=3)
    settings = grid(["aura"], sites=["sgm", "layers:0-1"], thresholds=[0.5, 0.6], strengths=[1.0, 2.0])
    settings += [Setting("det0", "sgm", k=20)]  # 9 settings: chunks of 3
    run = lambda out, chosen: sweep_run.run_sweep(
        model, processor, samples, neutral, judge, scores, chosen, groups, str(out), options=options, progress=False
    )
    whole = run(tmp_path / "whole", settings)
    assert whole["settings"] == 9 and whole["measured_now"] == 9
    with count_compiles() as compiles:  # other settings of the same site groups: no new program
        again = run(tmp_path / "other", [Setting("aura", "sgm", threshold=t) for t in (0.52, 0.58, 0.62, 0.65)])
    assert again["measured_now"] == 4 and compiles.count == 0

    real = sweep_run.SettingsEvaluator.measure
    calls = []

    def dies_in_the_second_chunk(self, ivs, **kw):
        calls.append(len(ivs))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(self, ivs, **kw)

    monkeypatch.setattr(sweep_run.SettingsEvaluator, "measure", dies_in_the_second_chunk)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "resumed", settings)
    monkeypatch.setattr(sweep_run.SettingsEvaluator, "measure", real)
    resumed = run(tmp_path / "resumed", settings)
    assert resumed["measured_now"] == 6  # the first chunk's 3 rows were kept
    lines = (tmp_path / "resumed" / "settings.jsonl").read_text().splitlines()[1:]
    keys = [json.loads(line)["key"] for line in lines]
    assert sorted(keys) == sorted(s.key for s in settings)  # every setting once: none lost, none twice
    assert _table(tmp_path / "resumed") == _table(tmp_path / "whole")
    with pytest.raises(sweep_run.SweepError, match="other max_new_tokens"):
        sweep_run.run_sweep(
            model,
            processor,
            samples,
            neutral,
            judge,
            scores,
            settings,
            groups,
            str(tmp_path / "whole"),
            options=SweepOptions(max_new_tokens=9, batch_size=8, chunk_size=3),
            progress=False,
        )


def _table(folder):
    with open(folder / "sweep.csv", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_grid_groups_and_settings_files(organism, setup, tmp_path):
    model, _ = organism
    scores = setup[2]
    settings = grid(
        ["aura", "damp", "det0"],
        sites=["sgm", "up"],
        thresholds=[0.5, 0.6],
        strengths=[1, 2],
        ks=[10, 20],
        alphas=[0.5],
    )
    assert len(settings) == 2 * (4 + 4 + 2)
    mine = "mine=model.language_model.layers.0.mlp.*"
    groups = site_groups(model, scores, ["sgm", "up", "layers:1-2", "vision", mine])
    assert groups["up"] == [f"model.language_model.layers.{i}.mlp.up_proj" for i in range(4)]
    assert all(".layers.1." in s or ".layers.2." in s for s in groups["layers:1-2"]) and len(groups["layers:1-2"]) == 6
    assert groups["vision"] == [f"model.vision_tower.encoder.layers.{i}.mlp.fc1" for i in range(2)]
    assert len(groups["mine"]) == 3
    with pytest.raises(OptionError, match="'down:in' holds none of the"):
        site_groups(model, scores, ["down:in"])
    iv = intervention_for(Setting("det0", "up", k=30), scores, groups)
    assert set(iv.sites) == set(groups["up"]) and iv.num_changed() == 30
    path = tmp_path / "grid.jsonl"
    path.write_text('{"method": "aura", "threshold": 0.6, "strength": 2}\n{"method": "det0", "k": 5, "sites": "up"}\n')
    assert read_settings(str(path)) == [Setting("aura", threshold=0.6, strength=2.0), Setting("det0", "up", k=5)]
    path.write_text('{"method": "aura"}\n')
    with pytest.raises(Exception, match=r"grid.jsonl, line 1: a aura setting takes \['threshold'\]"):
        read_settings(str(path))


def test_pareto_front():
    harmful = [0.1, 0.2, 0.1, 0.5, 0.05, np.nan]
    mcq = [0.9, 0.95, 0.8, 0.99, 0.5, 1.0]
    assert pareto_front(harmful, mcq, maximize_y=True).tolist() == [True, True, False, True, True, False]
    ppl = [2.0, 1.9, 2.0, 1.8, 3.0, 1.0]
    assert pareto_front(harmful, ppl, maximize_y=False).tolist() == [True, True, True, True, True, False]


def test_a_sweep_without_its_inputs_is_one_line(tmp_path, capsys):
    for argv, message in (
        (["--out", str(tmp_path / "a")], "a sweep needs --model, --scores, --data (or --demo"),
        (["--demo", "--model", ORGANISM, "--out", str(tmp_path / "b")], "--demo sweeps the bundled organism"),
    ):
        with pytest.raises(SystemExit) as stopped:
            cli.main(["sweep", *argv])
        assert stopped.value.code == 1
        assert f"sgm-jax sweep: error: {message}" in capsys.readouterr().err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_sweep_from_the_command_line(setup, tmp_path, capsys):
    root, paths, _, samples, *_ = setup
    out, data = tmp_path / "sweep", str(root / "data" / "prompts.jsonl")
    write_jsonl([s for s in samples if not s.options], data)
    cli.main(
        ["sweep", "--model", ORGANISM, "--scores", str(root / "scores.safetensors"), "--data", data]
        + ["--mcq", paths["mcq_test.jsonl"], "--neutral", paths["neutral.txt"]]
        + ["--judge", f"lexicon:{paths['lexicon.txt']}", "--method", "aura", "det0", "--threshold", "0.5", "0.3"]
        + ["--strength", "1", "2", "--k", "50", "--sites", "sgm", "late=*.layers.3.*"]
        + ["--max-new-tokens", "8", "--batch-size", "8", "--chunk-size", "4", "--out", str(out), "--quiet"]
    )
    printed = capsys.readouterr().out
    assert "10 settings (10 measured now" in printed and "front of harmful rate vs mcq_accuracy" in printed
    rows = _table(out)
    assert len(rows) == 10  # AurA: 2 thresholds x 2 strengths, Det0: one k; each on 2 site groups
    for column in (
        "method",
        "threshold",
        "strength",
        "k",
        "sites",
        "harmful_rate",
        "over_refusal",
        "mcq_accuracy",
        "perplexity",
    ):
        assert column in rows[0]
    assert {r["sites"] for r in rows} == {"sgm", "late"}
    assert (out / "pareto.png").stat().st_size > 10_000
    summary = json.loads((out / "sweep.json").read_text())
    assert summary["paper"]["SGM release (0.3)"]["threshold"] == 0.3
    assert summary["fronts"]["mcq_accuracy"] and summary["compiles"] > 0


def test_sampled_decoding_under_a_sweep_draws_as_separate_calls(organism, setup):
    model, processor = organism
    _, _, scores, samples, *_ = setup
    groups = site_groups(model, scores, ["sgm"])
    ivs = [intervention_for(Setting("aura", "sgm", threshold=t, strength=2.0), scores, groups) for t in (0.5, 0.7)]
    prompts = [s for s in samples if not s.options][:4]
    batch = collate([encode(s, processor) for s in prompts], pad_token_id(processor))
    ids, mask = batch.pop("input_ids"), batch.pop("attention_mask")
    options = {"max_new_tokens": 6, "temperature": 1.0, "top_k": 20, "seed": 3, "processor": processor}
    stack = GateStack(model, groups["sgm"])
    args, static = decode_arguments(model, ids, attention_mask=mask, **options, **batch)
    tokens, steps = decode_swept(stack.state(ivs), stack.rest, *args, graphdef=stack.graphdef, **static)
    for k, iv in enumerate(ivs):
        alone = sgm_jax.generate(sgm_jax.intervene(model, iv), ids, attention_mask=mask, **options, **batch)
        assert int(steps[k]) == alone.shape[1]
        np.testing.assert_array_equal(np.asarray(tokens[k])[:, : alone.shape[1]], alone)
