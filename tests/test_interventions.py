"""Interventions: AurA/Damp/Det0 from scores, files, strength, composition, and gates in the module tree."""

import jax
import numpy as np
import pytest
from flax import nnx

import hf_tiny
import sgm_jax
from sgm_jax.interventions import GateStack, Intervention, compose, load_intervention, swept_sites
from sgm_jax.models.site import Gate
from sgm_jax.responses.sites import SiteError, list_sites
from sgm_jax.runtime.compiles import count_compiles

# Sites gated in sgm_jax and, by the same factors, in transformers through hf_tiny.gate_hooks.
GATED = [
    "model.language_model.layers.0.mlp.up_proj",
    "model.language_model.layers.1.mlp.down_proj:in",
    "model.language_model.layers.1.mlp.act_fn",
    "model.vision_tower.encoder.layers.1.mlp.fc1",
    "model.multi_modal_projector.linear_1",
    "model.multi_modal_projector.linear_2:in",
]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return hf_tiny.llava_and_reference(tmp_path_factory.mktemp("iv"), seed=6, kv_heads=2)


def _close(actual, expected):
    np.testing.assert_allclose(actual, expected, rtol=1e-6, atol=1e-7)


def _random_intervention(model, seed):
    rng = np.random.default_rng(seed)
    widths = list_sites(model)
    return Intervention({s: rng.uniform(0.0, 1.5, widths[s]) for s in GATED}, {"method": "test"})


def _batch(model, seed=0):
    n = model.spec.features_per_image
    return hf_tiny.multimodal_batch(seed, pads=[0, 4], length=n + 10, features_per_image=n)


def test_scores_to_interventions():
    scores = {"a": np.array([0.9, 0.5, 0.2, 0.75]), "b": np.array([0.4, 0.95])}
    iv = sgm_jax.aura(scores, threshold=0.5, source={"pooling": "mean", "ignored": 1})
    _close(iv.alphas["a"], [0.2, 1.0, 1.0, 0.5])
    _close(iv.alphas["b"], [1.0, 0.1])
    assert iv.metadata == {"method": "aura", "threshold": 0.5, "amplifies": False, "experts": 3, "pooling": "mean"}
    sgm = sgm_jax.aura(scores, threshold=0.3)
    _close(sgm.alphas["b"], [1.2, 0.1])  # the release's 0.3 amplifies AUROC in (0.3, 0.5)
    assert sgm.metadata["amplifies"]
    damped = sgm_jax.damp(scores, k=2, alpha=0.5)
    _close(damped.alphas["a"], [0.5, 1, 1, 1])
    _close(damped.alphas["b"], [1, 0.5])
    zeroed = sgm_jax.det0(scores, k=3)
    _close(zeroed.alphas["a"], [0, 1, 1, 0])
    assert zeroed.metadata["method"] == "det0" and zeroed.num_changed() == 3
    with pytest.raises(ValueError, match="k=7"):
        sgm_jax.det0(scores, k=7)
    with pytest.raises(ValueError, match="AUROC values in"):
        sgm_jax.aura({"a": np.array([1.2])})


def test_strength_composition_and_files(tmp_path):
    iv = Intervention({"a": np.array([0.2, 1.0, 0.6])}, {"method": "aura"})
    _close(iv.with_strength(0).alphas["a"], [1, 1, 1])
    _close(iv.with_strength(1).alphas["a"], [0.2, 1, 0.6])
    _close(iv.with_strength(2).alphas["a"], [0, 1, 0.2])  # clipped at 0
    both = compose(iv, Intervention({"a": np.array([0.5, 0.5, 0.5]), "b": np.array([2.0])}))
    _close(both.alphas["a"], [0.1, 0.5, 0.3])
    _close(both.alphas["b"], [2.0])
    path = str(tmp_path / "iv.safetensors")
    both.save(path)
    back = load_intervention(path)
    assert back.metadata == both.metadata and back.sites == ["a", "b"]
    np.testing.assert_array_equal(back.alphas["a"], both.alphas["a"])
    with pytest.raises(ValueError, match="width 3 in one intervention and 2"):
        compose(iv, Intervention({"a": np.ones(2)}))


def test_gated_logits_equal_transformers_with_hooks(models):
    model, hf = models
    iv = _random_intervention(model, 0)
    gated = sgm_jax.intervene(model, iv)
    ids, mask, pixels = _batch(model)
    ours = np.asarray(gated(ids, pixel_values=pixels, attention_mask=mask))
    with hf_tiny.gate_hooks(hf, iv.alphas):
        ref = hf_tiny.reference_logits(hf, ids, mask, pixels)
    valid = mask.astype(bool)
    assert np.abs(ours - ref)[valid].max() <= 1e-4
    plain = np.asarray(model(ids, pixel_values=pixels, attention_mask=mask))
    assert np.abs(plain - ours)[valid].max() > 1e-2  # the gates really change the model


def test_weights_stay_bit_identical_and_all_ones_is_the_identity(models):
    model, _ = models
    before = {k: np.asarray(v) for k, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}
    ones = Intervention({s: np.ones(w, np.float32) for s, w in list_sites(model).items() if "lm_head" not in s})
    gated = sgm_jax.intervene(model, ones)
    after = dict(nnx.to_flat_state(nnx.state(gated, nnx.Param)))
    for k, v in before.items():
        np.testing.assert_array_equal(np.asarray(after[k]), v)
    assert not nnx.state(model, Gate)  # the original model has no gates
    assert not nnx.state(gated, Gate)  # identity gates are left out...
    ids, mask, pixels = _batch(model, 1)
    plain = np.asarray(model(ids, pixel_values=pixels, attention_mask=mask))
    np.testing.assert_array_equal(np.asarray(gated(ids, pixel_values=pixels, attention_mask=mask)), plain)
    kept = sgm_jax.intervene(model, ones, keep_identity=True)  # ...and when kept, change only XLA's rounding
    assert len(jax.tree.leaves(nnx.state(kept, Gate))) == len(ones.sites)
    np.testing.assert_allclose(np.asarray(kept(ids, pixel_values=pixels, attention_mask=mask)), plain, atol=1e-5)


def test_new_alphas_do_not_recompile(models):
    model, _ = models
    ids, mask, pixels = _batch(model, 2)
    stack = GateStack(model, swept_sites(model, [_random_intervention(model, 1)]))
    forward = jax.jit(
        lambda g, r: nnx.merge(stack.graphdef, g, r).forward(ids, pixel_values=pixels, attention_mask=mask).logits
    )
    outs = []
    for seed in range(3):
        gates = stack.state([_random_intervention(model, seed)])
        outs.append(np.asarray(forward(jax.tree.map(lambda x: x[0], gates), stack.rest)))
    assert forward._cache_size() == 1
    assert not np.allclose(outs[0], outs[1])


def test_sweep_equals_separate_calls(models):
    model, _ = models
    ids, mask, pixels = _batch(model, 3)
    ivs = [_random_intervention(model, s) for s in range(3)] + [Intervention({})]
    swept = sgm_jax.sweep(model, ivs, lambda m: m.forward(ids, pixel_values=pixels, attention_mask=mask).logits)
    assert swept.shape[0] == 4
    for k, iv in enumerate(ivs):
        one = np.asarray(sgm_jax.intervene(model, iv)(ids, pixel_values=pixels, attention_mask=mask))
        np.testing.assert_allclose(np.asarray(swept[k]), one, atol=1e-5)


def test_a_fresh_lambda_over_new_arrays_reuses_the_compile_in_chunks(models):
    model, _ = models
    sites = swept_sites(model, [_random_intervention(model, 0)])
    ivs = [_random_intervention(model, s) for s in range(7)]

    def last_logits(seed, ivs, chunk_size):
        ids, mask, pixels = _batch(model, seed)  # new arrays each call, closed over by a new lambda
        fn = lambda m: m.forward(ids, pixel_values=pixels, attention_mask=mask).logits[:, -1]
        return sgm_jax.sweep(model, ivs, fn, sites=sites, chunk_size=chunk_size), (ids, mask, pixels)

    last_logits(0, ivs[:3], 3)  # compiles once for this structure, function and chunk size
    with count_compiles() as compiles:
        first, first_inputs = last_logits(1, iter(ivs), 3)  # 7 settings: chunks of 3, 3 and 1 padded to 3
        second, second_inputs = last_logits(2, iter(ivs[:2]), 3)
    assert compiles.count == 0
    assert first.shape[0] == 7 and second.shape[0] == 2
    # The arrays are arguments, not constants of the first compile: each call computes on its own inputs.
    for swept, (ids, mask, pixels), k in (
        (first, first_inputs, 0),
        (first, first_inputs, 6),
        (second, second_inputs, 1),
    ):
        one = np.asarray(sgm_jax.intervene(model, ivs[k])(ids, pixel_values=pixels, attention_mask=mask))[:, -1]
        np.testing.assert_allclose(swept[k], one, atol=1e-5)
    # An all-ones setting keeps its gates inside a sweep: the same structure, no compile, the plain model's values.
    with count_compiles() as compiles:
        ones = Intervention({s: np.ones(w, np.float32) for s, w in list_sites(model).items() if s in sites})
        identity, (ids, mask, pixels) = last_logits(2, [ones, Intervention({})], 3)
    assert compiles.count == 0
    plain = np.asarray(model(ids, pixel_values=pixels, attention_mask=mask))[:, -1]
    np.testing.assert_allclose(identity[0], plain, atol=1e-5)
    np.testing.assert_array_equal(identity[0], identity[1])
    with pytest.raises(ValueError, match="not one of the 6 swept sites"):
        sgm_jax.sweep(
            model,
            [Intervention({"model.language_model.layers.0.mlp.gate_proj": np.ones(56)})],
            lambda m: m.forward(ids, attention_mask=mask).logits,
            sites=sites,
        )


def test_bad_interventions_name_the_site(models):
    model, _ = models
    with pytest.raises(SiteError, match=r"'model.language_model.layers.0.mlp.up_prj' is not a site.*up_proj"):
        sgm_jax.intervene(model, Intervention({"model.language_model.layers.0.mlp.up_prj": np.ones(56)}))
    with pytest.raises(ValueError, match=r"layers.0.mlp.up_proj': alpha has 3 values, the site has 56 neurons"):
        sgm_jax.intervene(model, Intervention({"model.language_model.layers.0.mlp.up_proj": np.ones(3)}))
    with pytest.raises(ValueError, match=r"'x' holds NaN or inf at 1 neuron\(s\), first 1"):
        Intervention({"x": np.array([1.0, np.nan])})
    # One rule for the API, the command line and files: a negative alpha is refused, never clipped to 0.
    with pytest.raises(ValueError, match=r"'x' is negative at 2 neuron\(s\) \(first 1: -0.5\)"):
        Intervention({"x": np.array([1.0, -0.5, -2.0])})
