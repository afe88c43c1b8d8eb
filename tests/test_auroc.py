"""Per-neuron AUROC against sklearn's roc_auc_score: exact on ties and signed zeros, chunk- and mesh-independent."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh
from sklearn.metrics import roc_auc_score

from sgm_jax.experts.auroc import auroc

N, M = 200, 40


def sklearn_auroc(responses, labels):
    return np.array([roc_auc_score(labels, responses[:, j]) for j in range(responses.shape[1])])


def tied_responses(rng):
    """Few distinct levels, a third exact zeros of either sign, some constant columns."""
    x = np.round(rng.standard_normal((N, M)) * 1.5).astype(np.float32)
    zeros = rng.random((N, M)) < 0.33
    x[zeros] = np.where(rng.random(zeros.sum()) < 0.5, -0.0, 0.0)
    x[:, :3] = [0.0, -2.0, 7.5]
    return x


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.mark.parametrize("positive_share", [0.5, 0.03])
def test_matches_sklearn_on_continuous_data(rng, positive_share):
    x = rng.standard_normal((N, M)).astype(np.float32) + np.linspace(-1, 1, M, dtype=np.float32)
    labels = np.arange(N) < max(2, int(positive_share * N))
    x[labels] += 0.3
    ours = auroc(x, labels)
    assert ours.dtype == np.float32 and ours.shape == (M,)
    np.testing.assert_allclose(ours, sklearn_auroc(x, labels), rtol=0, atol=1e-6)


def test_matches_sklearn_on_heavy_ties_and_signed_zeros(rng):
    x = tied_responses(rng)
    labels = rng.random(N) < 0.4
    np.testing.assert_allclose(auroc(x, labels), sklearn_auroc(x, labels), rtol=0, atol=1e-6)


def test_minus_zero_ties_plus_zero_and_constant_columns_give_exactly_half(rng):
    labels = rng.random(N) < 0.3
    signed_zero = np.where(labels, 0.0, -0.0).astype(np.float32)
    x = np.stack([signed_zero, np.zeros(N), np.full(N, -3.25), np.full(N, 1e30)], axis=1)
    assert roc_auc_score(labels, signed_zero) == 0.5
    assert (auroc(x, labels) == 0.5).all()


def test_label_dtypes_agree(rng):
    x = tied_responses(rng)
    labels = rng.random(N) < 0.5
    expected = auroc(x, labels)
    for as_dtype in (np.int64, np.int32, np.float32, np.float64):
        np.testing.assert_array_equal(auroc(x, labels.astype(as_dtype)), expected)
    np.testing.assert_array_equal(auroc(x, list(labels.astype(int))), expected)


@pytest.mark.parametrize("dtype", [np.float16, jnp.bfloat16, np.float64])
def test_input_dtypes_match_sklearn(rng, dtype):
    x = (rng.standard_normal((N, M)) * 4).astype(dtype)
    labels = rng.random(N) < 0.5
    reference = sklearn_auroc(x.astype(np.float64), labels)
    np.testing.assert_allclose(auroc(x, labels), reference, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(auroc(jnp.asarray(x), labels), auroc(x, labels))


def test_chunked_run_equals_one_chunk(rng):
    x = tied_responses(rng)
    labels = rng.random(N) < 0.5
    np.testing.assert_array_equal(auroc(x, labels, chunk_size=7), auroc(x, labels, chunk_size=M))


def test_eight_device_mesh_equals_one_device(rng):
    assert jax.device_count() == 8, "tests/conftest.py must set XLA_FLAGS before jax is imported"
    mesh = Mesh(np.array(jax.devices()).reshape(2, 4), ("a", "b"))
    x = tied_responses(rng)
    labels = rng.random(N) < 0.5
    one_device = auroc(x, labels, chunk_size=M)
    np.testing.assert_array_equal(auroc(x, labels, mesh=mesh), one_device)
    np.testing.assert_array_equal(auroc(x, labels, chunk_size=12, mesh=mesh), one_device)


def test_bad_inputs_say_what_is_wrong():
    x = np.zeros((4, 3), np.float32)
    labels = np.array([0, 1, 0, 1])
    with pytest.raises(ValueError, match="labels hold only class 1"):
        auroc(x, np.ones(4))
    with pytest.raises(ValueError, match="labels hold only class 0"):
        auroc(x, np.zeros(4, bool))
    with pytest.raises(ValueError, match=r"labels must be 0/1 \(or bool\), got \[-1, 2\]"):
        auroc(x, np.array([0, 2, -1, 1]))
    with pytest.raises(ValueError, match=r"responses must be 2-D \[samples, neurons\], got shape \(4,\)"):
        auroc(x[:, 0], labels)
    with pytest.raises(ValueError, match="labels must be 1-D"):
        auroc(x, labels[:, None])
    with pytest.raises(ValueError, match="responses has 4 samples .rows. but labels has 3"):
        auroc(x, labels[:3])
    with pytest.raises(ValueError, match="chunk_size must be a positive number of neurons, got 0"):
        auroc(x, labels, chunk_size=0)
    bad = x.copy()
    bad[2, 1] = np.nan
    bad[[0, 3], 2] = np.inf
    with pytest.raises(ValueError, match=r"NaN or inf .*column 1 rows \[2\]; column 2 rows \[0, 3\]"):
        auroc(bad, labels)
    with pytest.raises(ValueError, match=r"NaN or inf .*column 0 rows \[1\]"):
        auroc(np.array([[0.0], [1e39], [1.0], [2.0]]), labels)
