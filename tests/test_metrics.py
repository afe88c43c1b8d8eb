"""Metrics on fixtures with known answers: perplexity, response likelihood, MCQ accuracy, rates, distinct-n."""

import numpy as np
import pytest

import hf_tiny
import sgm_jax
import sgm_jax.evaluate.mcq as mcq
from sgm_jax.data import Sample, read_jsonl
from sgm_jax.decoding.batching import collate
from sgm_jax.evaluate.likelihood import LOGIT_POSITIONS, Scored, encode_response, response_scores, text_scores
from sgm_jax.evaluate.rates import distinct_n, grouped_rates, rate_with_interval


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    directory, data = hf_tiny.save_tiny_with_data(tmp_path_factory.mktemp("metrics"), seed=21, samples=6)
    model, processor = sgm_jax.load_model(directory)
    return model, processor, read_jsonl(data)


def _log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def test_a_uniform_model_has_perplexity_equal_to_its_vocabulary(checkpoint):
    model, processor, _ = checkpoint
    uniform = sgm_jax.build_model(model.spec.to_hf())
    uniform.model.language_model.norm.scale.set_value(np.zeros_like(uniform.model.language_model.norm.scale[...]))
    scores = text_scores(uniform, processor.tokenizer, ["a red square above a blue circle", "describe the picture"])
    assert scores.perplexity == pytest.approx(model.spec.text.vocab_size, rel=1e-5)


def test_text_and_response_scores_equal_the_model_logits(checkpoint):
    model, processor, samples = checkpoint
    # the long text spans several of the LM head's position chunks, and its last one only in part
    texts = ["three green triangles on the left", "a red square above a blue circle, " * 30]
    got = text_scores(model, processor.tokenizer, texts)
    for row, text in enumerate(texts):
        ids = np.asarray(processor.tokenizer(text)["input_ids"])
        logits = np.asarray(model(ids[None]))[0].astype(np.float64)
        expected = _log_softmax(logits)[np.arange(len(ids) - 1), ids[1:]].sum()
        assert got.tokens[row] == len(ids) - 1 and got.logprob[row] == pytest.approx(expected, abs=1e-4)
    assert got.tokens[1] > 2 * LOGIT_POSITIONS and got.tokens[1] % LOGIT_POSITIONS

    sample = samples[0]
    encoded = encode_response(sample, processor)
    batch = collate([encoded])
    logits = np.asarray(model(batch["input_ids"], pixel_values=batch["pixel_values"]))[0].astype(np.float64)
    ids, targets = encoded["input_ids"], encoded["targets"]
    response_ids = processor.tokenizer(" " + sample.response + "</s>", add_special_tokens=False)["input_ids"]
    assert ids[targets].tolist()[-len(response_ids) :] == response_ids
    positions = np.flatnonzero(targets)
    expected = _log_softmax(logits)[positions - 1, ids[positions]].sum()
    got = response_scores(model, processor, [sample, samples[1]])
    assert got.logprob[0] == pytest.approx(expected, abs=1e-4)


def test_mcq_accuracy_follows_the_option_likelihoods_and_circular_removes_letter_bias(checkpoint, monkeypatch):
    model, processor, samples = checkpoint
    items = [
        Sample(
            id=f"q{i}",
            prompt="which shape?",
            image=samples[i].image,
            options=("square", "circle", "triangle"),
            answer="ABC"[i % 3],
        )
        for i in range(3)
    ]
    real = mcq.mcq_accuracy(model, processor, items)
    scored = response_scores(
        model,
        processor,
        [
            Sample(
                id="x",
                prompt=mcq.question_text(s.prompt, s.options),
                image=s.image,
                response=f"{'ABC'[k]}. {s.options[k]}",
            )
            for s in items
            for k in range(3)
        ],
    ).logprob.reshape(3, 3)
    np.testing.assert_array_equal(real.choices[:, 0], scored.argmax(1))
    assert real.accuracy == np.mean(scored.argmax(1) == np.array([0, 1, 2]))

    def always_a(model, processor, samples, batch_size):  # a model that always prefers the letter A
        return Scored(np.array([0.0 if s.response.startswith("A.") else -5.0 for s in samples]), np.ones(len(samples)))

    monkeypatch.setattr(mcq, "response_scores", always_a)
    assert mcq.mcq_accuracy(model, processor, items).accuracy == pytest.approx(1 / 3)
    assert mcq.mcq_accuracy(model, processor, items, circular=True).accuracy == 0.0
    with pytest.raises(ValueError, match="answer 'D' is not one of the option letters"):
        mcq.mcq_accuracy(model, processor, [Sample(id="bad", prompt="?", options=("a", "b"), answer="D")])


def test_rates_intervals_and_distinct_n():
    flags = [1] * 30 + [0] * 70
    r = rate_with_interval(flags, seed=1)
    assert r["rate"] == 0.3 and r["n"] == 100 and r["low"] < 0.3 < r["high"]
    assert 0.2 < r["low"] and r["high"] < 0.4
    assert rate_with_interval([1, 1, 1])["low"] == 1.0
    groups = grouped_rates([1, 0, 1, 1], ["a", "a", "b", "b"])
    assert groups["all"]["rate"] == 0.75 and groups["a"]["rate"] == 0.5 and groups["b"]["rate"] == 1.0
    assert distinct_n(["a b a b", "a b"], 1) == 2 / 6
    assert distinct_n(["a b a b"], 2) == 2 / 3
    assert distinct_n([""], 2) == 0.0
