"""One batching module: buckets, plans, left padding and the checks every model-facing batch goes through."""

import numpy as np
import pytest

from sgm_jax.decoding.batching import collate, plan_batches, shared_length
from sgm_jax.models.batch import model_batch
from sgm_jax.models.causal_lm import CausalLM
from sgm_jax.runtime.buckets import bucket_length, left_pad


def test_buckets_bound_the_number_of_compiled_shapes_and_the_padding():
    lengths = {n: bucket_length(n) for n in range(1, 4097)}
    assert all(n <= b <= max(16, 1.25 * n) for n, b in lengths.items())
    assert len({lengths[n] for n in range(600, 1200)}) <= 5  # one octave of lengths, a handful of compiles
    assert len(set(lengths.values())) <= 4 * 8 + 1


def test_plans_group_similar_lengths_deterministically():
    lengths = [9, 3, 7, 3, 12, 5]
    plan = plan_batches(lengths, 2)
    assert plan == [[1, 3], [5, 2], [0, 4]]
    assert sorted(i for batch in plan for i in batch) == list(range(6))
    assert plan_batches(lengths, 2) == plan
    with pytest.raises(ValueError, match="batch_size must be >= 1, got 0"):
        plan_batches(lengths, 0)


def test_a_set_pads_to_one_length_unless_that_doubles_its_tokens():
    short = [12, 30, 48, 20, 17, 45, 33, 26]  # neutral sentences: buckets 20 to 48; one length runs 1.4x the tokens
    plan = plan_batches(short, 2)
    assert len({bucket_length(max(short[i] for i in rows)) for rows in plan}) == 4
    assert shared_length(short, plan) == 48
    spread = [20, 24, 28, 30, 32, 36, 40, 2000]  # one long text: padding the rest to it would run 3.8x the tokens
    plan = plan_batches(spread, 2)
    assert shared_length(spread, plan) == 0
    assert shared_length([], []) == 0
    batch = collate([{"input_ids": np.array([5, 6])}], length=4)
    assert batch["input_ids"].tolist() == [[0, 0, 5, 6]] and batch["attention_mask"].tolist() == [[0, 0, 1, 1]]


def test_collate_left_pads_tokens_and_concatenates_images():
    encoded = [
        {
            "input_ids": np.array([5, 6, 7]),
            "targets": np.array([False, True, True]),
            "pixel_values": np.ones((1, 3, 2, 2), np.float32),
        },
        {"input_ids": np.array([8])},
        {"input_ids": np.array([1, 2]), "pixel_values": 2 * np.ones((2, 3, 2, 2), np.float32)},
    ]
    batch = collate(encoded, pad_id=4)
    np.testing.assert_array_equal(batch["input_ids"], [[5, 6, 7], [4, 4, 8], [4, 1, 2]])
    np.testing.assert_array_equal(batch["attention_mask"], [[1, 1, 1], [0, 0, 1], [0, 1, 1]])
    np.testing.assert_array_equal(batch["targets"], [[False, True, True], [False] * 3, [False] * 3])
    assert batch["pixel_values"][:, 0, 0, 0].tolist() == [1, 2, 2]

    wide = left_pad(batch, 5, pad_id=4)
    np.testing.assert_array_equal(wide["input_ids"][1], [4, 4, 4, 4, 8])
    np.testing.assert_array_equal(wide["attention_mask"][0], [0, 0, 1, 1, 1])
    assert wide["pixel_values"] is batch["pixel_values"]


class _TextOnly(CausalLM):
    model_type = "text-only test model"

    def __init__(self):  # no backbone: only the batch checks are under test
        pass


def test_model_batches_are_checked_and_bucketed():
    model = _TextOnly()
    batch = model_batch(model, {"input_ids": np.arange(21).reshape(1, 21)}, pad_id=3)
    assert batch.input_ids.shape == (1, bucket_length(21)) and batch.input_ids.dtype == np.int32
    assert batch.input_ids[0, 0] == 3 and batch.attention_mask.sum() == 21 and batch.targets is None
    assert model_batch(model, batch) is batch  # prepared once: a prepared batch is taken as it is
    with pytest.raises(
        ValueError,
        match=r"_TextOnly got inputs \['pixel_values'\] it does not take; it takes no "
        r"image inputs \(a text-only model\)",
    ):
        model_batch(model, {"input_ids": np.ones((1, 4)), "pixel_values": np.ones((1, 3, 2, 2))})
    with pytest.raises(ValueError, match=r"must be the same \[batch, seq\] shape"):
        model_batch(model, {"input_ids": np.ones((1, 4)), "attention_mask": np.ones((1, 5))})
