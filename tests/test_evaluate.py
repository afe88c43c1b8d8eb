"""The evaluation runner end to end on a tiny checkpoint: answers cached and resumed, results, report and plots."""

import dataclasses
import json

import numpy as np
import pytest
from PIL import Image

import hf_tiny
import sgm_jax
import sgm_jax.evaluate.answers as answers_module
from sgm_jax.data import Sample, read_jsonl
from sgm_jax.evaluate.compare import compare, comparison_table
from sgm_jax.evaluate.runner import Configuration, EvalOptions, evaluate
from sgm_jax.interventions import Intervention
from sgm_jax.judges import LexiconJudge, RefusalJudge


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    directory, data = hf_tiny.save_tiny_with_data(root, seed=31, samples=8)
    model, processor = sgm_jax.load_model(directory)
    samples = read_jsonl(data)
    samples = [
        Sample(
            id=s.id,
            prompt=s.prompt,
            image=s.image,
            label=s.label,
            category=s.category,
            response=s.response if i % 2 else None,
            condition="typo" if i % 4 == 3 else "standard",
        )
        for i, s in enumerate(samples)
    ]
    samples += [
        Sample(
            id=f"mcq{i}", prompt="which colour?", image=samples[i].image, options=("red", "blue"), answer="AB"[i % 2]
        )
        for i in range(2)
    ]
    lexicon = root / "lexicon.txt"
    lexicon.write_text("\n".join(processor.tokenizer.get_vocab()) + "\n")  # every word: all answers are "harmful"
    return model, processor, samples, LexiconJudge(str(lexicon))


def test_evaluate_writes_results_report_and_plots(setup, tmp_path):
    model, processor, samples, judge = setup
    widths = sgm_jax.list_sites(model)
    iv = Intervention(
        {s: np.full(widths[s], 0.5, np.float32) for s in widths if s.endswith("mlp.up_proj")},
        {"method": "test", "threshold": 0.5},
    )
    scores = {s: np.random.default_rng(0).uniform(0, 1, widths[s]) for s in widths if s.endswith("mlp.up_proj")}
    results = evaluate(
        model,
        processor,
        samples,
        judge=judge,
        out_dir=str(tmp_path),
        intervention=iv,
        neutral_texts=["a red square above a blue circle", "describe the picture please"],
        scores=scores,
        options=EvalOptions(max_new_tokens=4, batch_size=4, progress=False),
    )
    assert set(results["settings"]) == {"before", "after"}
    before = results["settings"]["before"]
    assert before["harmful_rate"]["all"]["n"] == 3 and before["over_refusal"]["n"] == 5
    assert set(before["harmful_rate"]["condition"]) == {"all", "standard", "typo"}
    for key in ("harmful_rate", "over_refusal", "mcq_accuracy", "perplexity", "answer_perplexity", "distinct_2"):
        assert f"{key}_before" in results and f"{key}_after" in results, key
    assert results["perplexity_before"] != results["perplexity_after"]
    on_disk = json.loads((tmp_path / "results.json").read_text())
    assert on_disk["harmful_rate_before"] == results["harmful_rate_before"]
    report = (tmp_path / "report.md").read_text()
    assert "| harmful rate |" in report and "| multiple-choice accuracy |" in report
    for name in (
        "harmful_rate_by_category.png",
        "alpha_distribution.png",
        "auroc_by_layer.png",
        "experts_per_layer.png",
    ):
        with Image.open(tmp_path / name) as image:
            assert image.size[0] > 300 and len(np.unique(np.asarray(image.convert("L")))) > 10, name
        assert f"]({name})" in report


def test_generated_answers_resume_after_an_interruption(setup, tmp_path, monkeypatch):
    model, processor, samples, _ = setup
    open_ended = [s for s in samples if not s.options]
    cache = str(tmp_path / "answers.jsonl")
    full = answers_module.generate_answers(
        model,
        processor,
        open_ended,
        cache_path=str(tmp_path / "full.jsonl"),
        max_new_tokens=4,
        batch_size=3,
        progress=False,
    )
    calls = []
    real = answers_module.answer_batch

    def flaky(*args, **kwargs):
        if len(calls) == 1:
            raise KeyboardInterrupt
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(answers_module, "answer_batch", flaky)
    with pytest.raises(KeyboardInterrupt):
        answers_module.generate_answers(
            model, processor, open_ended, cache_path=cache, max_new_tokens=4, batch_size=3, progress=False
        )
    with open(cache, "a") as f:
        f.write('{"id": "torn')  # a write cut short by kill -9
    calls.clear()
    monkeypatch.setattr(answers_module, "answer_batch", lambda *a, **k: calls.append(1) or real(*a, **k))
    resumed = answers_module.generate_answers(
        model, processor, open_ended, cache_path=cache, max_new_tokens=4, batch_size=3, progress=False
    )
    assert resumed == full and len(calls) == 2  # 3 batches planned, 1 done before the interruption
    without_references = [Sample(id=s.id, prompt=s.prompt, image=s.image) for s in open_ended]
    assert (
        answers_module.generate_answers(
            model,
            processor,
            without_references,
            cache_path=str(tmp_path / "bare.jsonl"),
            max_new_tokens=4,
            batch_size=3,
            progress=False,
        )
        == full
    )
    lines = [json.loads(line) for line in open(cache).read().splitlines()[1:] if line.startswith('{"id": "s')]
    assert sorted(row["id"] for row in lines) == sorted(s.id for s in open_ended)
    with pytest.raises(ValueError, match="other settings"):
        answers_module.generate_answers(
            model, processor, open_ended, cache_path=cache, max_new_tokens=5, progress=False
        )


def test_an_edited_prompt_or_image_is_answered_again_not_served_from_the_cache(setup, tmp_path, monkeypatch):
    model, processor, samples, _ = setup
    open_ended = [s for s in samples if not s.options and s.image][:3]
    cache, real, calls = str(tmp_path / "answers.jsonl"), answers_module.answer_batch, []
    monkeypatch.setattr(answers_module, "answer_batch", lambda *a, **k: calls.append(len(a[3])) or real(*a, **k))
    run = lambda items: answers_module.generate_answers(  # noqa: E731
        model, processor, items, cache_path=cache, max_new_tokens=4, batch_size=8, progress=False
    )
    first = run(open_ended)
    assert run(open_ended) == first and calls == [3]  # unchanged: all from the cache
    image = tmp_path / "other.png"
    Image.fromarray(np.full((24, 24, 3), 255, np.uint8)).save(image)
    edited = [
        dataclasses.replace(open_ended[0], prompt=open_ended[0].prompt + " and name its colour"),
        dataclasses.replace(open_ended[1], image=str(image)),
        open_ended[2],
    ]
    again = run(edited)
    assert calls == [3, 2] and again[open_ended[2].id] == first[open_ended[2].id]  # only the two edited ones
    assert run(edited) == again and calls == [3, 2]


def test_an_empty_or_torn_answer_cache_is_rebuilt_and_a_damaged_one_named(setup, tmp_path):
    model, processor, samples, _ = setup
    items = [s for s in samples if not s.options][:2]
    cache = tmp_path / "answers.jsonl"
    run = lambda: answers_module.generate_answers(  # noqa: E731
        model, processor, items, cache_path=str(cache), max_new_tokens=3, progress=False
    )
    expected = run()
    for left_behind in ("", '{"settings": {"model_fing'):  # what a full disk leaves at the first write
        cache.write_text(left_behind)
        assert run() == expected
    cache.write_text('{"settings": ' + "\n" + json.dumps({"id": items[0].id, "answer": "x"}) + "\n")
    with pytest.raises(ValueError, match="answer cache .*answers.jsonl: its first line .* is damaged"):
        run()


def test_the_report_names_what_its_judge_measures_and_a_rate_without_rows_is_a_dash(setup, tmp_path):
    """With the refusal judge "harmful" means "did not refuse": the report and the comparison say so. Without benign
    rows there is no over-refusal to measure: no row in the report, a dash in the comparison, null in the JSON
    (never `nan%`, or NaN)."""
    model, processor, samples, _ = setup
    harmful = [s for s in samples if s.label == 1]
    options = EvalOptions(max_new_tokens=2, batch_size=4, progress=False)
    results = evaluate(model, processor, harmful, judge=RefusalJudge(), out_dir=str(tmp_path), options=options)
    on_disk = json.loads((tmp_path / "results.json").read_text(), parse_constant=pytest.fail)
    assert on_disk["over_refusal_before"] is None and on_disk["judge_measures"] == "non-refusal rate"
    report = (tmp_path / "report.md").read_text()
    assert "Judge: `refusal` (its harmful rate is the non-refusal rate)." in report
    assert f"| non-refusal rate | {results['harmful_rate_before']:.1%} |" in report
    assert "| non-refusal rate, condition standard |" in report and "| harmful rate" not in report
    assert "over-refusal" not in report and "nan" not in report
    rows = compare(
        model, processor, harmful, judge=RefusalJudge(), out_dir=str(tmp_path), configurations=[Configuration("none")]
    )
    table = comparison_table(rows["comparison"], rows["judge_measures"])
    assert table.startswith("| configuration | non-refusal rate (95% CI) | over-refusal |")
    assert rows["comparison"]["none"]["over_refusal"] is None and "| – |" in table and "nan" not in table


def test_a_baseline_is_answered_once_for_every_output_folder(setup, tmp_path, monkeypatch):
    model, processor, samples, _ = setup
    open_ended = [s for s in samples if not s.options]
    monkeypatch.setenv(answers_module.SHARED_ENV, str(tmp_path / "shared"))
    answered, answer_batch = [], answers_module.answer_batch

    def counted(base, model, processor, batch, *args, **kwargs):
        answered.extend(s.id for s in batch)
        return answer_batch(base, model, processor, batch, *args, **kwargs)

    monkeypatch.setattr(answers_module, "answer_batch", counted)

    def answers_in(folder: str, rows, **settings):
        (tmp_path / folder).mkdir()
        path = str(tmp_path / folder / "answers_before.jsonl")
        return answers_module.generate_answers(model, processor, rows, cache_path=path, progress=False, **settings)

    first = answers_in("first", open_ended, max_new_tokens=4)
    assert sorted(answered) == sorted(s.id for s in open_ended)
    # another folder, another selection of the same prompts and one edited prompt: only that one is answered
    edited = dataclasses.replace(open_ended[0], id="edited", prompt=open_ended[0].prompt + " now")
    answered.clear()
    second = answers_in("second", open_ended[1:] + [edited], max_new_tokens=4)
    assert answered == ["edited"]
    assert all(second[s.id] == first[s.id] for s in open_ended[1:])
    with open(tmp_path / "second" / "answers_before.jsonl") as f:  # the folder holds every answer it gave
        assert {json.loads(line)["id"] for line in f.readlines()[1:]} == set(second)
    answered.clear()
    answers_in("other-settings", open_ended, max_new_tokens=5)  # other settings: another baseline
    assert sorted(answered) == sorted(s.id for s in open_ended)
    monkeypatch.setenv(answers_module.SHARED_ENV, "off")
    answered.clear()
    answers_in("off", open_ended, max_new_tokens=4)
    assert sorted(answered) == sorted(s.id for s in open_ended)
