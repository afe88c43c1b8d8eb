"""Linear-AcT and Mean-AcT: the estimator against apple/ml-act's on the same responses, transports as state in
the module tree (against forward hooks on transformers), swept over lambda, stacked, saved, and folded into the
weights on export where a bias can hold the shift."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

import hf_tiny
import sgm_jax
from sgm_jax.experts.transport import transport_maps
from sgm_jax.interventions import Intervention, compose, load_intervention
from sgm_jax.interventions.intervention import identity_transport
from sgm_jax.models.site import Gate, transported
from sgm_jax.responses.sites import list_sites
from sgm_jax.runtime.compiles import count_compiles
from sgm_jax.runtime.errors import InterventionError
from sgm_jax.weights.export import NotFoldableError, export_hf
from sgm_jax.weights.sharding import make_mesh

UP = "model.language_model.layers.0.mlp.up_proj"
FC1 = "model.vision_tower.encoder.layers.1.mlp.fc1"


def _responses(seed: int, n: int, width: int = 300) -> np.ndarray:
    """Heavy-tailed responses, each neuron with its own location and spread (as MLP activations are)."""
    rng = np.random.default_rng(seed)
    return (rng.standard_t(3, (n, width)) * rng.uniform(0.1, 2.0, width) + rng.normal(0, 1, width)).astype(np.float32)


def _ml_act_linear(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """apple/ml-act's `LinearOTHook.fit` (act/hooks/transport.py) restated: each neuron's source and target sorted
    (`solve_ot_1d`), the float64 least-squares line through the pairs with 1e-8 noise on the source
    (`LinearProj.optimize`), the support the source's 0 and 1 quantiles (`compute_quantiles`, `q_0_100`)."""
    z_src, z_dst = torch.tensor(source), torch.tensor(target)
    x = torch.sort(z_src, 0).values.numpy().astype(np.float64)
    y = torch.sort(z_dst, 0).values.numpy().astype(np.float64)
    m_x, m_y = x.mean(0, keepdims=True), y.mean(0, keepdims=True)
    x = x + 1e-8 * np.random.default_rng(0).standard_normal(x.shape)
    beta = np.sum((x - m_x) * (y - m_y), 0) / np.sum((x - m_x) ** 2, 0)
    alpha = m_y[0] - beta * m_x[0]
    low, high = torch.quantile(z_src, 0.0, dim=0).numpy(), torch.quantile(z_src, 1.0, dim=0).numpy()
    return np.stack([beta.astype(np.float32), alpha.astype(np.float32), low, high])


def _ml_act_hook(z: np.ndarray, fit: np.ndarray, strength: float) -> np.ndarray:
    """ml-act's `LearnableOTHook.forward`: transport inside the support, mixed with the input by `strength`."""
    z, (w, b, low, high) = torch.tensor(z), torch.tensor(fit)
    mask = ((low < z) & (z < high)).to(z.dtype)
    z_ot = strength * (z * w + b) + (1 - strength) * z
    return (mask * z_ot + (1 - mask) * z).numpy()


def test_linear_act_equals_ml_acts_estimator_and_hook():
    source, target = _responses(0, 256), _responses(1, 256) * 0.5 + 0.3
    ours = transport_maps(source, target, "linear-act")
    reference = _ml_act_linear(source, target)
    error = np.abs(ours - reference).max(axis=1)
    print(f"max |ours - ml-act|: scale {error[0]:.1e}, shift {error[1]:.1e}, support {max(error[2:]):.1e}")
    np.testing.assert_allclose(ours[:2], reference[:2], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(ours[2:], reference[2:])
    # Applied at strength lambda, inside and outside the support, as ml-act's hook applies it.
    probe = np.concatenate([_responses(2, 64), source[:8], target[:8]])
    moved = Intervention({}, transports={"s": ours}).with_strength(0.6).transports["s"]
    np.testing.assert_allclose(
        np.asarray(transported(jnp.asarray(probe), jnp.asarray(moved))), _ml_act_hook(probe, ours, 0.6), atol=1e-5
    )


def test_unequal_counts_pair_quantiles_and_chunks_and_a_mesh_change_nothing():
    source, target = _responses(3, 150, 40), _responses(4, 230, 40) * 2.0 - 1.0
    ours = transport_maps(source, target, "linear-act")
    levels = (np.arange(150) + 0.5) / 150
    paired = np.quantile(target.astype(np.float64), levels, axis=0, method="hazen")
    x = np.sort(source.astype(np.float64), axis=0)
    for neuron in range(40):
        scale, shift = np.polyfit(x[:, neuron], paired[:, neuron], 1)
        np.testing.assert_allclose(ours[:2, neuron], [scale, shift], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(ours[2], source.min(0))
    np.testing.assert_array_equal(ours[3], source.max(0))
    np.testing.assert_array_equal(transport_maps(source, target, "linear-act", chunk_size=7), ours)
    mesh = make_mesh(data=8)
    np.testing.assert_allclose(transport_maps(source, target, "linear-act", mesh=mesh), ours, rtol=1e-6)


def test_mean_act_equals_ml_acts_only_mean_transport():
    source, target = _responses(5, 100, 30), _responses(6, 80, 30) + 0.7
    source[:, 3] = 2.0  # a neuron that never varies in the source: left alone, as ml-act masks it
    ours = transport_maps(source, target, "mean-act")
    z_src, z_dst = torch.tensor(source, dtype=torch.float64), torch.tensor(target, dtype=torch.float64)
    mask = (z_src.std(0) > 1e-4) & (z_dst.std(0) > 1e-4)
    shift = torch.where(mask, z_dst.mean(0) - z_src.mean(0), 0.0).numpy()
    np.testing.assert_allclose(ours[1], shift, rtol=1e-6, atol=1e-7)
    assert ours[1, 3] == 0 and (ours[0] == 1).all() and np.isinf(ours[2:]).all()


def test_a_constant_neuron_keeps_the_identity_and_bad_input_is_refused():
    source, target = _responses(7, 20, 5), _responses(8, 20, 5)
    source[:, 2] = 0.0  # a dead neuron: no line through it, and an empty support
    fit = transport_maps(source, target)
    assert fit[0, 2] == 1 and fit[1, 2] == 0 and fit[2, 2] == fit[3, 2] == 0
    assert not Intervention({}, transports={"s": fit}).changed()["s"][2]
    source[4, 1] = np.nan
    with pytest.raises(ValueError, match=r"source responses hold NaN or inf \(first at row 4, column 1\)"):
        transport_maps(source, target)
    with pytest.raises(ValueError, match="not one of"):
        transport_maps(target, target, "gaussian")


def test_files_strength_and_composition(tmp_path):
    fit = transport_maps(_responses(9, 64, 12), _responses(10, 64, 12) + 1.0)
    iv = sgm_jax.transport({UP: fit}, "linear-act", source={"pooling": "mean"})
    assert iv.metadata == {"method": "linear-act", "pooling": "mean"} and iv.sites == [UP]
    iv.save(str(tmp_path / "act.safetensors"))
    loaded = load_intervention(str(tmp_path / "act.safetensors"))
    np.testing.assert_array_equal(loaded.transports[UP], fit)
    assert loaded.alphas == {} and loaded.num_changed() == 12
    half = loaded.with_strength(0.5).transports[UP]
    np.testing.assert_allclose(half[:2], [1 - 0.5 * (1 - fit[0]), 0.5 * fit[1]], rtol=1e-6)
    assert loaded.with_strength(0).num_changed() == 0
    gate = Intervention({UP: np.full(12, 0.5, np.float32)})
    assert compose(gate, iv).transports[UP] is not None  # a gate, then the transport: one intervention
    with pytest.raises(InterventionError, match="nothing can follow a transport"):
        compose(iv, gate)
    with pytest.raises(InterventionError, match="output, not its input"):
        Intervention({}, transports={UP + ":in": fit})
    with pytest.raises(InterventionError, match="must be >= 0"):
        Intervention({}, transports={UP: fit * np.array([[-1], [1], [1], [1]])})


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return hf_tiny.llava_and_reference(tmp_path_factory.mktemp("act"), seed=8, kv_heads=2)


def _batch(model, seed=0):
    n = model.spec.features_per_image
    return hf_tiny.multimodal_batch(seed, pads=[0, 3], length=n + 9, features_per_image=n)


def _split_at_zero(model, site, seed):
    """A transport whose even neurons move below 0 and odd ones above: both sides of every support occur."""
    width, rng = list_sites(model)[site], np.random.default_rng(seed)
    below = np.arange(width) % 2 == 0
    return np.stack(
        [
            rng.uniform(0.3, 1.6, width),
            rng.normal(0, 0.1, width),
            np.where(below, -np.inf, 0),
            np.where(below, 0, np.inf),
        ]
    )


def test_transports_equal_ml_act_hooks_on_transformers_and_stack_after_gates(models):
    model, hf = models
    ids, mask, pixels = _batch(model, 1)
    rng = np.random.default_rng(2)
    gate = Intervention({UP: rng.uniform(0.2, 1.5, list_sites(model)[UP]).astype(np.float32)})
    act = Intervention({}, transports={UP: _split_at_zero(model, UP, 3), FC1: _split_at_zero(model, FC1, 4)})
    both = compose(gate, act)
    ours = np.asarray(sgm_jax.intervene(model, both)(ids, pixel_values=pixels, attention_mask=mask))
    with hf_tiny.gate_hooks(hf, both.alphas, both.transports):
        ref = hf_tiny.reference_logits(hf, ids, mask, pixels)
    plain = hf_tiny.reference_logits(hf, ids, mask, pixels)
    valid = mask.astype(bool)
    assert np.abs(ours - ref)[valid].max() <= 1e-4 < np.abs(plain - ref)[valid].max()
    stacked = sgm_jax.intervene(sgm_jax.intervene(model, gate), act)  # the same, one intervention at a time
    np.testing.assert_allclose(np.asarray(stacked(ids, pixel_values=pixels, attention_mask=mask)), ours, atol=1e-6)
    with pytest.raises(InterventionError, match="already carries a transport"):
        sgm_jax.intervene(stacked, gate)


def test_a_sweep_over_lambda_equals_separate_calls_under_one_compile(models):
    model, _ = models
    ids, mask, pixels = _batch(model, 4)
    act = Intervention({}, transports={UP: _split_at_zero(model, UP, 5)})
    fn = lambda m: m.forward(ids, pixel_values=pixels, attention_mask=mask).logits[:, -1]  # noqa: E731
    sgm_jax.sweep(model, [act.with_strength(0.1)], fn, chunk_size=2)
    with count_compiles() as compiles:
        swept = sgm_jax.sweep(model, [act.with_strength(s) for s in (0.0, 0.5, 1.0)], fn, chunk_size=2)
    assert compiles.count == 0
    plain = np.asarray(model(ids, pixel_values=pixels, attention_mask=mask))[:, -1]
    np.testing.assert_allclose(swept[0], plain, atol=1e-5)
    for k, strength in enumerate((0.5, 1.0), 1):
        gated = sgm_jax.intervene(model, act.with_strength(strength))
        np.testing.assert_allclose(
            swept[k], np.asarray(gated(ids, pixel_values=pixels, attention_mask=mask))[:, -1], atol=1e-5
        )
    assert not np.allclose(swept[2], plain, atol=1e-3)


def test_mean_act_folds_into_biases_on_export_and_linear_act_is_refused_by_name(models, tmp_path):
    model, _ = models
    shift = np.random.default_rng(6).normal(0, 0.2, list_sites(model)[FC1])
    mean_act = np.stack([np.ones_like(shift), shift, np.full_like(shift, -np.inf), np.full_like(shift, np.inf)])
    gate = Intervention({FC1: np.random.default_rng(7).uniform(0.5, 1.5, len(shift)).astype(np.float32)})
    gated = sgm_jax.intervene(model, compose(gate, Intervention({}, transports={FC1: mean_act})))
    out = export_hf(gated, str(tmp_path / "export"))
    ids, mask, pixels = _batch(model, 5)
    ref = hf_tiny.reference_logits(hf_tiny.load_reference(out), ids, mask, pixels)
    ours = np.asarray(gated(ids, pixel_values=pixels, attention_mask=mask))
    assert np.abs(ours - ref)[mask.astype(bool)].max() <= 1e-4
    exported, _ = sgm_jax.load_model(out)
    assert not nnx.state(exported, Gate)
    bounded = sgm_jax.intervene(model, Intervention({}, transports={FC1: _split_at_zero(model, FC1, 8)}))
    with pytest.raises(NotFoldableError, match=rf"only inside a range.*\['{FC1}'\]"):
        export_hf(bounded, str(tmp_path / "refused"))
    width = list_sites(model)[UP]
    no_bias = np.stack([np.ones(width), np.full(width, 0.1), np.full(width, -np.inf), np.full(width, np.inf)])
    unbiased = sgm_jax.intervene(model, Intervention({}, transports={UP: no_bias}))
    with pytest.raises(NotFoldableError, match=rf"no bias.*mlp_bias.*\['{UP}'\]"):
        export_hf(unbiased, str(tmp_path / "refused"))
    identity = sgm_jax.intervene(
        model, Intervention({}, transports={UP: identity_transport(width)}), keep_identity=True
    )
    assert jax.tree.leaves(nnx.state(identity, Gate)) and export_hf(identity, str(tmp_path / "identity"))
