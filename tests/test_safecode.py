"""SafeCoDe against direct computations and against transformers with forward hooks, on the bundled organism."""

import dataclasses
from importlib.resources import files

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from transformers import LlavaForConditionalGeneration

import sgm_jax
from sgm_jax.data import read_jsonl
from sgm_jax.data.encode import encode, render
from sgm_jax.data.images import load_rgb
from sgm_jax.data.synthetic import Composition, write_dataset
from sgm_jax.decoding.batching import collate
from sgm_jax.decoding.generate import special_ids
from sgm_jax.defenses import FixedVerdicts, SafeCoDe, safecode_tokens
from sgm_jax.defenses.refusal_tokens import (
    PREFERRED_KEYWORDS,
    QUOTES,
    REFUSAL_PREFIXES,
    _facts,
    refusal_vocabulary,
)
from sgm_jax.defenses.safecode import _words, damp_refusals, noised_image, two_view_batch
from sgm_jax.models.batch import model_batch
from sgm_jax.models.causal_lm import prepared_logits
from sgm_jax.responses.sites import site_refs
from sgm_jax.weights import sharding

ORGANISM = str(files("sgm_jax.bundled") / "organism")
SMALL = Composition(
    train_shape_scenes=4,
    train_word_scenes=2,
    test_shape_scenes=8,
    test_word_scenes=4,
    mcq_train=1,
    mcq_test=1,
    neutral_train=2,
    neutral_test=2,
)
GREEDY = {"guided_temperature": 0.0, "safe_temperature": 0.0, "unsafe_temperature": 0.0}


@pytest.fixture(scope="module")
def organism():
    return sgm_jax.load_model(ORGANISM)


@pytest.fixture(scope="module")
def samples(tmp_path_factory):
    paths = write_dataset(str(tmp_path_factory.mktemp("data")), seed=0, composition=SMALL)
    test = read_jsonl(paths["test.jsonl"])
    harmful = [s for s in test if s.label == 1][:3]
    benign = [s for s in test if s.label == 0][:3]
    return harmful + benign


def _separate_logits(model, processor, sample, image):
    encoded = encode(dataclasses.replace(sample, response=None), processor, image=image)
    pad = processor.tokenizer.pad_token_id
    batch = model_batch(model, collate([encoded], pad), pad)
    return np.asarray(prepared_logits(model, batch)[0, -1])


def test_two_views_share_one_batch_and_equal_two_separate_forwards(organism, samples):
    model, processor = organism
    settings = SafeCoDe(FixedVerdicts(True))
    batch = two_view_batch(model, processor, samples, settings)
    logits = np.asarray(prepared_logits(model, batch)[:, -1])
    n = len(samples)
    for i, s in enumerate(samples):
        real = _separate_logits(model, processor, s, load_rgb(s.image))
        noised = _separate_logits(model, processor, s, noised_image(load_rgb(s.image), 0.1, 0, s.id))
        assert np.abs(real - noised).max() > 1e-3  # the noise reaches the logits
        contrast = logits[i] - 0.3 * logits[n + i]
        np.testing.assert_allclose(contrast, real - 0.3 * noised, atol=1e-5)


def test_noised_view_is_one_seeded_8bit_gaussian_draw(samples):
    image = load_rgb(samples[0].image)
    a = np.asarray(noised_image(image, 0.1, 0, "x"), np.float64)
    assert np.array_equal(a, np.asarray(noised_image(image, 0.1, 0, "x")))
    assert not np.array_equal(a, np.asarray(noised_image(image, 0.1, 1, "x")))
    delta = a / 255 - np.asarray(image, np.float64) / 255
    interior = (np.asarray(image) > 40) & (np.asarray(image) < 215)  # away from the clip at 0 and 1
    assert abs(delta[interior].std() - 0.1) < 0.01 and abs(delta[interior].mean()) < 0.01


def test_refusal_set_is_the_tokenizer_union_of_the_phrases(organism):
    _, processor = organism
    tok = processor.tokenizer
    vocab = refusal_vocabulary(tok, len(tok))
    kept = [p for p in REFUSAL_PREFIXES if tok.unk_token_id not in tok.encode(p, add_special_tokens=False)]
    expected = sorted({i for p in kept for i in tok.encode(p, add_special_tokens=False)})
    assert np.flatnonzero(vocab.refusal).tolist() == expected
    assert vocab.phrases == tuple(kept) and len(kept) + len(vocab.dropped) == len(REFUSAL_PREFIXES)
    assert vocab.preferred.tolist() == [any(k in p.lower() for k in PREFERRED_KEYWORDS) for p in kept]
    assert "sorry" in tok.convert_ids_to_tokens(expected)


def test_damping_multiplies_refusal_probabilities_by_one_minus_half_lambda():
    probs = jnp.asarray([[0.1, 0.2, 0.3, 0.4]])
    refusal = jnp.asarray([True, False, True, False])
    for lam in (0.0, 1.0, 1.5, 2.0):
        damped = np.asarray(damp_refusals(probs, refusal, lam))[0]
        raw = np.asarray([0.1 * (1 - lam / 2), 0.2, 0.3 * (1 - lam / 2), 0.4])
        np.testing.assert_allclose(damped, raw / raw.sum(), rtol=1e-6)
    all_refusal = np.asarray(damp_refusals(probs, jnp.ones(4, bool), 2.0))
    np.testing.assert_allclose(all_refusal, probs)  # nothing left: the undamped row


def _two_word_stop(text: str) -> bool:
    words = text.split()
    return len(words) >= 2 and len(words[0]) >= 2 and words[0][0].isupper()


def test_word_automaton_reads_a_prefix_as_the_text_rule_does():
    pieces = ["", " ", "\n", "I", " I", "Su", "re", " re", "re ", " x y", "'", "Hello", " Hello", " ,", "ab cd"]
    facts = {f.name: jnp.asarray(getattr(_facts(pieces), f.name)) for f in dataclasses.fields(_facts(pieces))}
    rng = np.random.default_rng(0)
    for _ in range(400):
        seq = rng.integers(0, len(pieces), rng.integers(1, 6))
        state = (jnp.zeros(1, jnp.int32), jnp.zeros(1, jnp.int32), jnp.zeros(1, bool))
        for t in seq:
            state = _words(state, jnp.asarray([t]), facts)
        got = bool((state[0][0] == 3) & (state[1][0] >= 2) & state[2][0])
        text = "".join(pieces[t] for t in seq)
        assert got == _two_word_stop(text), (text, got)


def test_forgetting_the_last_tokens_equals_never_feeding_them(organism):
    model, _ = organism
    ids = jnp.asarray([[2, 10, 11, 12]], jnp.int32)
    cache = model.init_cache(1, 12)
    _, cache = model.forward_with_cache(ids, cache, last_only=True)
    _, fed = model.forward_with_cache(jnp.asarray([[20, 21]], jnp.int32), cache, last_only=True)
    after, _ = model.forward_with_cache(jnp.asarray([[22]]), fed.forget_last(jnp.asarray([2])), last_only=True)
    direct, _ = model.forward_with_cache(jnp.asarray([[22]]), cache, last_only=True)
    np.testing.assert_allclose(np.asarray(after), np.asarray(direct), atol=1e-5)


def _expected_phrase(probs: np.ndarray, vocab, top_k: int) -> int:
    """The unsafe branch's choice computed directly: bag scores, stable sort, shortlist, preference."""
    scores = [
        sum(probs[t] for t in vocab.phrase_tokens[i, : vocab.phrase_lengths[i]]) for i in range(len(vocab.phrases))
    ]
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    preferred = [i for i in order[:top_k] if vocab.preferred[i]]
    return preferred[0] if preferred else order[0]


@pytest.mark.parametrize("top_k", [1, 20])
def test_unsafe_branch_forces_the_phrase_the_scoring_rule_picks(organism, samples, top_k):
    model, processor = organism
    vocab = refusal_vocabulary(processor.tokenizer, len(processor.tokenizer))
    settings = SafeCoDe(FixedVerdicts(True), top_k=top_k, unsafe_tokens=3, **GREEDY)
    out = safecode_tokens(model, processor, samples, np.ones(len(samples), bool), settings, max_new_tokens=24)
    for s, tokens in zip(samples, out):
        real = _separate_logits(model, processor, s, load_rgb(s.image))
        noised = _separate_logits(model, processor, s, noised_image(load_rgb(s.image), 0.1, 0, s.id))
        probs = np.asarray(jax.nn.softmax(jnp.asarray(real - 0.3 * noised)))
        chosen = _expected_phrase(probs, vocab, top_k)
        m = min(int(vocab.phrase_lengths[chosen]), settings.max_steps)
        assert tokens[:m].tolist() == vocab.phrase_tokens[chosen, :m].tolist()
        assert len(tokens) <= m + 3  # the unsafe budget counts after the forced tokens


def test_budgets_steps_and_seeds(organism, samples):
    model, processor = organism
    safe = np.zeros(len(samples), bool)
    short = SafeCoDe(FixedVerdicts(False), max_steps=1, safe_tokens=2)
    assert all(len(t) <= 3 for t in safecode_tokens(model, processor, samples, safe, short))
    sampled = SafeCoDe(FixedVerdicts(False), safe_tokens=12)
    first = safecode_tokens(model, processor, samples, safe, sampled, seed=3)
    again = safecode_tokens(model, processor, samples, safe, sampled, seed=3)
    other = safecode_tokens(model, processor, samples, safe, sampled, seed=4)
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    assert any(not np.array_equal(a, b) for a, b in zip(first, other))
    capped = safecode_tokens(model, processor, samples, safe, sampled, seed=3, max_new_tokens=4)
    assert all(len(t) <= 4 for t in capped)


# -- against transformers: SGM gates by forward hooks, SafeCoDe's rules on the hooked model's logits -------------


def _reference(hf, hf_twin, processor, sample, unsafe: bool, settings: SafeCoDe, budget: int) -> list[int]:
    """SafeCoDe greedy, one sample, full forwards without a cache (as the official code runs it)."""
    tok = processor.tokenizer
    vocab = refusal_vocabulary(tok, len(tok))
    prompt = render(dataclasses.replace(sample, response=None), processor)
    views = [load_rgb(sample.image), noised_image(load_rgb(sample.image), 0.1, 0, sample.id)]
    inputs = [processor(images=[v], text=[prompt], return_tensors="pt") for v in views]

    def logits(view, tokens):
        ids = torch.cat([inputs[view]["input_ids"], torch.tensor([tokens], dtype=torch.long)], 1)
        with torch.no_grad():
            return hf(input_ids=ids, pixel_values=inputs[view]["pixel_values"]).logits[0, -1].double().numpy()

    softmax = lambda z: np.exp(z - z.max()) / np.exp(z - z.max()).sum()
    eos = special_ids(hf_twin, processor, None, None)[0][0]  # the checkpoint's EOS, as transformers' generate
    out: list[int] = []
    if unsafe:
        probs = softmax(logits(0, []) - settings.alpha * logits(1, []))
        chosen = _expected_phrase(probs, vocab, settings.top_k)
        out = vocab.phrase_tokens[chosen, : min(int(vocab.phrase_lengths[chosen]), settings.max_steps)].tolist()
        limit = len(out) + (settings.unsafe_tokens or 20)
    else:
        for t in range(settings.max_steps):
            probs = softmax(logits(0, out) - settings.alpha / 2 * logits(1, out))
            probs = np.where(vocab.refusal, probs * (1 - settings.lambda_supp / 2), probs)
            ranked = np.argsort(-probs, kind="stable")
            pick = ranked[1] if t == 0 and tok.decode([ranked[0]]).strip() in QUOTES else ranked[0]
            out.append(int(pick))
            if pick == eos or (t >= 1 and _two_word_stop(tok.decode(out, skip_special_tokens=True))):
                break
        limit = len(out) + settings.safe_tokens
    while len(out) < min(limit, budget) and (not out or out[-1] != eos):
        out.append(int(np.argmax(logits(0, out))))
    return out


def test_gated_safecode_equals_transformers_hooks_and_the_rules(organism, samples):
    model, processor = organism
    rng = np.random.default_rng(0)
    sites = [f"model.language_model.layers.{i}.mlp.{p}" for i in range(4) for p in ("gate_proj", "down_proj")]
    widths = site_refs(model)
    alphas = {s: rng.uniform(0.6, 1.2, widths[s].width).astype(np.float32) for s in sites}
    gated = sgm_jax.intervene(model, sgm_jax.Intervention(alphas))
    hf = LlavaForConditionalGeneration.from_pretrained(ORGANISM, attn_implementation="eager").eval()
    for name, alpha in alphas.items():
        scale = torch.from_numpy(alpha)
        hf.get_submodule(name).register_forward_hook(lambda m, i, o, a=scale: o * a)
    settings = SafeCoDe(FixedVerdicts(False), **GREEDY)
    budget = 12
    for unsafe in (True, False):
        verdicts = np.full(len(samples), unsafe)
        ours = safecode_tokens(gated, processor, samples, verdicts, settings, max_new_tokens=budget)
        for s, tokens in zip(samples, ours):
            assert tokens.tolist() == _reference(hf, model, processor, s, unsafe, settings, budget), (s.id, unsafe)


def test_safecode_on_a_sharded_model_writes_what_one_device_writes(organism, samples):
    """The organism over 4 devices (fsdp), both views' 12 rows split over them: SafeCoDe's tokens on both branches
    are the single-device model's."""
    model, processor = organism
    mesh = sharding.make_mesh(data=1, fsdp=4, tensor=1, devices=jax.devices()[:4])
    sharded, _ = sgm_jax.load_model(ORGANISM, mesh=mesh)
    unsafe = np.arange(len(samples)) % 2 == 0
    settings = SafeCoDe(FixedVerdicts(False), **GREEDY)
    expected = safecode_tokens(model, processor, samples, unsafe, settings, max_new_tokens=8)
    for got, want in zip(safecode_tokens(sharded, processor, samples, unsafe, settings, max_new_tokens=8), expected):
        np.testing.assert_array_equal(got, want)
