"""A real pretrained checkpoint, SmolLM2-135M-Instruct, through the port: logits, residual stream and greedy
generation (chat prompts, left-padded batch, EOS from the checkpoint's own configs) equal transformers'."""

import copy
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from flax import nnx
from transformers import AutoModelForCausalLM

import hf_tiny
import sgm_jax
import smollm2

pytestmark = pytest.mark.slow

PROMPTS = [  # of 37, 38 and 48 tokens once templated: the batch pads two rows by 11 and 10
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "Give me three tips for staying healthy, and say in one sentence why each one matters.",
]
MAX_NEW_TOKENS = 32
EOS = 2  # <|im_end|>, this checkpoint's eos and pad id


@pytest.fixture(scope="module")
def smol():
    try:
        directory = smollm2.checkpoint()
    except smollm2.CheckpointUnavailable as err:
        pytest.skip(f"SmolLM2 checkpoint unavailable: {err}")
    model, tokenizer = sgm_jax.load_model(directory)
    texts = [
        tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
        for p in PROMPTS
    ]
    batch = tokenizer(texts, padding=True, padding_side="left", return_tensors="np")
    assert len(set(batch["attention_mask"].sum(1))) > 1, "the prompts should need padding"
    reference = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32, attn_implementation="eager").eval()
    # The reference runs on one thread: on a small shared machine, OpenMP threads spinning against other work
    # made it about ten times slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield SimpleNamespace(
        model=model, tokenizer=tokenizer, reference=reference, ids=batch["input_ids"], mask=batch["attention_mask"]
    )
    torch.set_num_threads(threads)


def test_logits_and_residual_stream_match_transformers(smol):
    ids, mask = smol.ids, smol.mask
    with torch.no_grad():
        ref = smol.reference(
            input_ids=torch.tensor(ids),
            attention_mask=torch.tensor(mask),
            position_ids=torch.tensor(hf_tiny.generate_positions(mask)),
            output_hidden_states=True,
        )
    valid = mask.astype(bool)
    ours = nnx.jit(lambda m, i, a: m.forward(i, attention_mask=a))(smol.model, ids, mask)
    # transformers' hidden states: the stream entering each layer, then the final norm's output.
    stream = ours.text_stream[:-1] + [ours.text_final]
    assert len(stream) == len(ref.hidden_states) == smol.model.spec.num_hidden_layers + 1
    # Relative to each state's largest entry: from layer 12 on one channel carries ~25000, where an fp32 ulp is 2e-3.
    errors = []
    for a, b in zip(stream, ref.hidden_states):
        b = b.numpy()[valid]
        errors.append(np.abs(np.asarray(a)[valid] - b).max() / np.abs(b).max())
    worst = int(np.argmax(errors))
    print(f"hidden states: worst max-abs error {errors[worst]:.2e} of the state's scale (hidden state {worst})")
    assert max(errors) <= 1e-5, f"hidden state {worst}: {errors[worst]:.2e} of its scale"

    # fp32 rounding alone exceeds 1e-4 here (|logit| up to ~40, 30 layers; our result moves ~2e-4 with the padding),
    # so the bound is transformers' own fp32 error against float64 on the same weights: ours may be at most twice as
    # far from float64. (A wrong rms_norm_eps, 1e-6 for 1e-5, is 3e-2 off.) float64 runs one unpadded row at a time:
    # its eager softmax is fp32, where float64's mask value turns -inf and a padded row NaN.
    logits, ref_logits = np.asarray(smol.model(ids, attention_mask=mask))[valid], ref.logits.numpy()[valid]
    exact = copy.deepcopy(smol.reference).double()
    with torch.no_grad():
        exact = np.concatenate(
            [exact(input_ids=torch.tensor(row[keep][None])).logits[0].numpy() for row, keep in zip(ids, valid)]
        )
    err, ours_rounding = np.abs(logits - ref_logits).max(), np.abs(logits - exact).max()
    rounding = np.abs(ref_logits - exact).max()
    print(
        f"logits: max-abs error {err:.2e} (max |logit| {np.abs(exact).max():.1f}); against float64: "
        f"ours {ours_rounding:.2e}, transformers fp32 {rounding:.2e}"
    )
    assert ours_rounding <= 2 * rounding, f"logits: {ours_rounding:.2e} from float64, fp32 rounding is {rounding:.2e}"
    assert (logits.argmax(-1) == ref_logits.argmax(-1)).all()


def test_greedy_generation_matches_transformers_and_stops_at_eos(smol):
    ids, mask = smol.ids, smol.mask
    ours = sgm_jax.generate(smol.model, ids, attention_mask=mask, max_new_tokens=MAX_NEW_TOKENS)
    with torch.no_grad():
        ref = smol.reference.generate(
            input_ids=torch.tensor(ids),
            attention_mask=torch.tensor(mask),
            do_sample=False,
            max_new_tokens=MAX_NEW_TOKENS,
        )
    ref = ref[:, ids.shape[1] :].numpy()
    for row, prompt in enumerate(PROMPTS):
        text = smol.tokenizer.decode(ref[row], skip_special_tokens=True)
        print(f"{prompt!r} -> {text!r}")
        assert ours[row].tolist() == ref[row].tolist(), f"row {row} ({prompt!r})"
    france = ours[0].tolist()
    assert EOS in france, "the answer to the France prompt should end with <|im_end|>"
    stop = france.index(EOS)
    assert set(france[stop:]) == {EOS}, "a finished row is padded with the pad id (= eos)"
    assert "Paris" in smol.tokenizer.decode(france[:stop])
    keep = mask[0].astype(bool)
    alone = sgm_jax.generate(smol.model, ids[:1, keep], max_new_tokens=MAX_NEW_TOKENS)
    assert alone.tolist() == [france[: stop + 1]], "alone and unpadded, the row gives the same answer and ends there"
