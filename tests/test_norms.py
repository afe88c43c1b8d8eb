"""`OffsetRMSNorm`, Gemma's `(1 + w)` RMSNorm: transformers' numbers in float32 and bfloat16, and a gate on its
output folds into its weight exactly."""

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from transformers.models.gemma3.modeling_gemma3 import Gemma3RMSNorm

import sgm_jax
from sgm_jax.interventions import Intervention
from sgm_jax.models.layers import OffsetRMSNorm
from sgm_jax.weights.convert import hf_targets
from sgm_jax.weights.export import fold_gates

WIDTH, EPS = 48, 1e-6


class Holder(nnx.Module):
    """A model whose one site is `norm`, as a norm sits inside a layer."""

    def __init__(self, dtype):
        self.norm = OffsetRMSNorm(WIDTH, eps=EPS, dtype=dtype, rngs=nnx.Rngs(0))

    def __call__(self, x):
        return self.norm(x)


def _pair(dtype, torch_dtype, seed=0):
    """Ours and transformers' norm with the same random weight, copied through our `hf_params`."""
    torch.manual_seed(seed)
    reference = torch.nn.Module()
    reference.norm = Gemma3RMSNorm(WIDTH, eps=EPS)
    torch.nn.init.normal_(reference.norm.weight, std=0.5)
    reference.to(torch_dtype)
    ours = Holder(dtype)
    weights = {key: value.float().numpy() for key, value in reference.state_dict().items()}
    targets = hf_targets(ours)
    assert set(targets) == set(weights)
    for key, target in targets.items():
        target.variable.set_value(jnp.asarray(np.transpose(weights[key], target.perm), dtype))
    return ours, reference


def _input(torch_dtype, seed=1):
    return torch.randn(3, 5, WIDTH, generator=torch.Generator().manual_seed(seed)).mul(3).to(torch_dtype)


def test_starts_as_the_identity_scale_and_has_both_sites():
    model = Holder(jnp.float32)
    np.testing.assert_array_equal(np.asarray(model.norm.scale[...]), 0)
    assert sgm_jax.list_sites(model) == {"norm": WIDTH, "norm:in": WIDTH}


def test_matches_gemma3_rms_norm_in_float32():
    ours, reference = _pair(jnp.float32, torch.float32)
    x = _input(torch.float32)
    with torch.no_grad():
        expected = reference.norm(x).numpy()
    np.testing.assert_allclose(np.asarray(ours(jnp.asarray(x.numpy()))), expected, rtol=1e-6, atol=1e-6)


def test_bfloat16_scales_in_float32_then_casts_as_transformers_does():
    ours, reference = _pair(jnp.bfloat16, torch.bfloat16)
    x = _input(torch.bfloat16)
    with torch.no_grad():
        expected = reference.norm(x).float().numpy()
    xj = jnp.asarray(x.float().numpy(), jnp.bfloat16)
    out = ours(xj)
    assert out.dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(out, np.float32), expected)
    # Llama's order (cast, then scale in bfloat16) rounds twice and differs: the test above sees the order.
    cast_first = (1 + ours.norm.scale[...]) * ours.norm.normalize(xj).astype(jnp.bfloat16)
    assert not np.array_equal(np.asarray(cast_first, np.float32), expected)


# float32: the fold rounds `alpha * (1 + w)` once more; bfloat16: the folded weight is stored in bfloat16.
@pytest.mark.parametrize(
    "dtype, torch_dtype, tolerance", [(jnp.float32, torch.float32, 1e-6), (jnp.bfloat16, torch.bfloat16, 2e-2)]
)
def test_gate_on_the_output_folds_into_the_weight(dtype, torch_dtype, tolerance):
    ours, _ = _pair(dtype, torch_dtype)
    alpha = np.random.default_rng(2).uniform(0.0, 1.5, WIDTH).astype(np.float32)
    alpha[:5] = 0.0
    before = np.asarray(ours.norm.scale[...], np.float32)
    gated = sgm_jax.intervene(ours, Intervention({"norm": alpha}))
    folded = fold_gates(gated)
    assert folded.norm.gate_out is None
    x = jnp.asarray(_input(torch.float32).numpy(), dtype)
    want, got = np.asarray(gated(x), np.float32), np.asarray(folded(x), np.float32)
    np.testing.assert_allclose(got, want, rtol=tolerance, atol=tolerance)
    np.testing.assert_array_equal(got[..., :5], 0.0)
    np.testing.assert_array_equal(np.asarray(ours.norm.scale[...], np.float32), before)
