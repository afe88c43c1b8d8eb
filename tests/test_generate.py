"""KV-cached generation against transformers `generate`, the cache against the uncached forward, sampling, CLI."""

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from PIL import Image
from transformers import LlamaForCausalLM

import hf_tiny
import sgm_jax
from sgm_jax import cli
from sgm_jax.data.encode import encode
from sgm_jax.data.samples import Sample
from sgm_jax.decoding.generate import decode
from sgm_jax.interventions import Intervention
from sgm_jax.responses.sites import list_sites

# Sites gated in sgm_jax and, by the same factors, in transformers through hf_tiny.gate_hooks.
GATED = [
    "model.language_model.layers.0.mlp.gate_proj",
    "model.language_model.layers.0.mlp.up_proj",
    "model.language_model.layers.1.mlp.down_proj:in",
    "model.language_model.layers.1.self_attn",
    "model.multi_modal_projector.linear_2",
]
NEW = 8


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return hf_tiny.llava_and_reference(tmp_path_factory.mktemp("gen"), seed=4, kv_heads=2)


def _batch(model, seed=0, pads=(0, 3, 7)):
    n = model.spec.features_per_image
    return hf_tiny.multimodal_batch(seed, pads=list(pads), length=n + 10, features_per_image=n)


def _intervention(model, seed):
    rng = np.random.default_rng(seed)
    widths = list_sites(model)
    return Intervention({s: rng.uniform(0.0, 1.4, widths[s]) for s in GATED})


def _hf_generate(hf, ids, mask, pixels=None, *, eos, pad, iv=None):
    """transformers greedy decoding, with the intervention as forward (pre-)hooks multiplying the same modules."""
    images = {} if pixels is None else {"pixel_values": torch.tensor(pixels)}
    with hf_tiny.gate_hooks(hf, iv.alphas if iv else {}), torch.no_grad():
        out = hf.generate(
            input_ids=torch.tensor(ids),
            attention_mask=torch.tensor(mask),
            do_sample=False,
            max_new_tokens=NEW,
            eos_token_id=eos,
            pad_token_id=pad,
            **images,
        )
    return out[:, ids.shape[1] :].numpy()


def _unused_ids(tokens, vocab, count):
    return [i for i in range(vocab) if i not in set(tokens.ravel().tolist())][:count]


@pytest.mark.parametrize("gated", [False, True], ids=["plain", "intervention"])
def test_greedy_tokens_equal_transformers(models, gated):
    model, hf = models
    iv = _intervention(model, 1) if gated else None
    if gated:
        model = sgm_jax.intervene(model, iv)
    ids, mask, pixels = _batch(model)
    full = sgm_jax.generate(
        model, ids, pixel_values=pixels, attention_mask=mask, max_new_tokens=NEW, eos_token_id=[]
    )  # no EOS: not even the one the checkpoint's config names
    eos, pad = _unused_ids(full, 99, 2)  # an EOS nobody produces: every row runs all NEW steps
    ref = _hf_generate(hf, ids, mask, pixels, eos=eos, pad=pad, iv=iv)
    assert ref.shape == (3, NEW)
    np.testing.assert_array_equal(full, ref)
    if gated:  # the gates really change what is generated
        plain = sgm_jax.generate(
            models[0], ids, pixel_values=pixels, attention_mask=mask, max_new_tokens=NEW, eos_token_id=[]
        )
        assert not np.array_equal(full, plain)

    eos = int(full[1, 2])  # now row 1 stops after 3 tokens; the rows that stop emit pad after their EOS
    ours = sgm_jax.generate(
        model,
        ids,
        pixel_values=pixels,
        attention_mask=mask,
        max_new_tokens=NEW,
        eos_token_id=[eos, 98],
        pad_token_id=pad,
    )
    ref = _hf_generate(hf, ids, mask, pixels, eos=[eos, 98], pad=pad, iv=iv)
    np.testing.assert_array_equal(ours, ref)
    assert (ours[1, 3:] == pad).all() and (ours[1, :3] == full[1, :3]).all()


def test_generation_stops_when_every_row_has_stopped(models):
    model, hf = models
    ids, mask, pixels = _batch(model, 1)
    full = sgm_jax.generate(model, ids, pixel_values=pixels, attention_mask=mask, max_new_tokens=NEW)
    eos = sorted({int(full[r, 1]) for r in range(3)})  # every row stops at its second token
    ours = sgm_jax.generate(
        model, ids, pixel_values=pixels, attention_mask=mask, max_new_tokens=NEW, eos_token_id=eos, pad_token_id=0
    )
    np.testing.assert_array_equal(ours, _hf_generate(hf, ids, mask, pixels, eos=eos, pad=0))
    assert ours.shape[1] < NEW


def test_text_only_llama_greedy_equals_transformers(tmp_path):
    directory = hf_tiny.save_llama(str(tmp_path), seed=5)
    model, _ = sgm_jax.load_model(directory)
    hf = hf_tiny.load_reference(directory, LlamaForCausalLM)
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 120, (3, 21))
    mask = np.ones_like(ids)
    for row, pad in enumerate([0, 5, 11]):
        mask[row, :pad], ids[row, :pad] = 0, 0
    full = sgm_jax.generate(model, ids, attention_mask=mask, max_new_tokens=NEW)
    eos, pad = _unused_ids(full, 120, 2)
    np.testing.assert_array_equal(full, _hf_generate(hf, ids, mask, eos=eos, pad=pad))


def test_cached_logits_equal_the_uncached_forward(models):
    model, _ = models
    gated = sgm_jax.intervene(model, _intervention(model, 2))
    ids, mask, pixels = _batch(gated, 2)
    new = np.random.default_rng(0).integers(0, 99, (3, 5))

    @nnx.jit
    def cached(m, ids, mask, pixels, new):
        cache = m.init_cache(ids.shape[0], ids.shape[1] + new.shape[1] + 3)
        logits, cache = m.forward_with_cache(ids, cache, attention_mask=mask, pixel_values=pixels)
        steps = []
        for i in range(new.shape[1]):
            step, cache = m.forward_with_cache(new[:, i : i + 1], cache, last_only=True)
            steps.append(step)
        return logits, jnp.stack(steps, 1)

    prompt_logits, step_logits = cached(gated, ids, mask, pixels, new)
    full = np.asarray(
        gated(
            np.concatenate([ids, new], 1),
            pixel_values=pixels,
            attention_mask=np.concatenate([mask, np.ones_like(new)], 1),
        )
    )
    valid = mask.astype(bool)
    assert np.abs(np.asarray(prompt_logits) - full[:, : ids.shape[1]])[valid].max() <= 1e-4
    np.testing.assert_allclose(np.asarray(step_logits), full[:, ids.shape[1] :], atol=1e-4)


def test_sampling_is_reproducible_and_top_k_1_is_greedy(models):
    model, _ = models
    ids, mask, pixels = _batch(model, 3)
    run = lambda **kw: sgm_jax.generate(model, ids, pixel_values=pixels, attention_mask=mask, max_new_tokens=NEW, **kw)
    greedy = run()
    a, b = run(temperature=2.0, seed=1), run(temperature=2.0, seed=1)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, run(temperature=2.0, seed=2))
    np.testing.assert_array_equal(run(temperature=2.0, top_k=1, seed=3), greedy)
    np.testing.assert_array_equal(run(temperature=2.0, top_p=1e-6, seed=3), greedy)
    top3 = run(temperature=5.0, top_k=3, top_p=0.9, seed=4)
    assert not np.array_equal(top3, greedy)


def test_new_alphas_and_sampling_settings_do_not_recompile(models):
    model, _ = models
    ids, mask, pixels = _batch(model, 4)
    outs = []
    for seed in range(3):
        gated = sgm_jax.intervene(model, _intervention(model, 10 + seed))
        outs.append(
            sgm_jax.generate(
                gated,
                ids,
                pixel_values=pixels,
                attention_mask=mask,
                max_new_tokens=NEW,
                temperature=1.0 + seed,
                top_k=seed,
                top_p=1 - seed / 10,
                seed=seed,
            )
        )
        if seed == 0:
            compiled = decode._cache_size()
    assert decode._cache_size() == compiled
    assert not np.array_equal(outs[0], outs[1])


def test_token_counts_within_one_buffer_share_a_program_and_prefix(models):
    """ECSO's 4-token check, its caption and the answer run one compiled program per prompt shape."""
    model, _ = models
    ids, mask, pixels = _batch(model, 4)
    run = lambda n: sgm_jax.generate(
        model, ids, pixel_values=pixels, attention_mask=mask, max_new_tokens=n, eos_token_id=-1, pad_token_id=0
    )
    long = run(24)
    compiled = decode._cache_size()
    for n in (4, 17, 32):
        tokens = run(n)
        assert tokens.shape == (len(ids), n)
        shared = min(n, 24)
        np.testing.assert_array_equal(tokens[:, :shared], long[:, :shared])
    assert decode._cache_size() == compiled
    assert run(33).shape == (len(ids), 33)  # past the buffer: a bigger one, compiled once
    assert decode._cache_size() == compiled + 1


def test_bad_inputs_say_what_is_wrong(models):
    model, _ = models
    ids, mask, pixels = _batch(model, 5)
    with pytest.raises(ValueError, match=r"input_ids hold 48 <image> tokens .* 2 image\(s\) give 32 features"):
        sgm_jax.generate(model, ids, pixel_values=pixels[:2], attention_mask=mask)
    with pytest.raises(ValueError, match="max_new_tokens must be a whole number >= 1, got 0"):
        sgm_jax.generate(model, ids, pixel_values=pixels, attention_mask=mask, max_new_tokens=0)
    with pytest.raises(ValueError, match=r"rows \[1, 2\] have padding after their tokens"):
        sgm_jax.generate(model, ids, pixel_values=pixels, attention_mask=mask[:, ::-1])
    with pytest.raises(ValueError, match="top_p must be in"):
        sgm_jax.generate(model, ids, pixel_values=pixels, attention_mask=mask, temperature=1.0, top_p=0)


def test_generate_command_prints_the_same_text_as_the_api(tmp_path, capsys):
    directory = hf_tiny.save_tiny(tmp_path / "ckpt", seed=9, processor=True)
    image = str(tmp_path / "image.png")
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (30, 20, 3), dtype=np.uint8)).save(image)
    model, processor = sgm_jax.load_model(directory)
    iv = Intervention({"model.language_model.layers.0.mlp.up_proj": np.linspace(0, 1.4, 56)}, {"method": "test"})
    iv_path = str(tmp_path / "iv.safetensors")
    iv.save(iv_path)

    cli.main(
        [
            "generate",
            "--model",
            directory,
            "--image",
            image,
            "--prompt",
            "describe the picture please",
            "--intervention",
            iv_path,
            "--intervention",
            iv_path,
            "--strength",
            "0.5",
            "--max-new-tokens",
            "6",
        ]
    )
    printed = capsys.readouterr().out.strip()

    encoded = encode(Sample(id="p", prompt="describe the picture please", image=image), processor)
    half = iv.with_strength(0.5)
    gated = sgm_jax.intervene(model, sgm_jax.compose(half, half))
    tokens = sgm_jax.generate(
        gated, encoded["input_ids"][None], pixel_values=encoded["pixel_values"], max_new_tokens=6, processor=processor
    )
    assert printed == processor.tokenizer.decode(tokens[0], skip_special_tokens=True).strip()


def test_eos_and_pad_default_to_the_checkpoints(models):
    """With no ids given, generation stops at the EOS the checkpoint's config names, as transformers does."""
    model, _ = models
    eos, pad = dict(model.special_tokens)["eos_token_id"], dict(model.special_tokens)["pad_token_id"]
    ids, mask, pixels = _batch(model)
    never = sgm_jax.generate(model, ids, pixel_values=pixels, attention_mask=mask, max_new_tokens=NEW, eos_token_id=[])
    default = sgm_jax.generate(model, ids, pixel_values=pixels, attention_mask=mask, max_new_tokens=NEW)
    explicit = sgm_jax.generate(
        model,
        ids,
        pixel_values=pixels,
        attention_mask=mask,
        max_new_tokens=NEW,
        eos_token_id=list(eos),
        pad_token_id=eos[0] if pad is None else pad,
    )
    np.testing.assert_array_equal(default, explicit)
    assert (never == eos[0]).any(), "the fixture should produce the config's EOS somewhere"
    row, col = np.argwhere(never == eos[0])[0]
    assert (default[row, : col + 1] == never[row, : col + 1]).all() and (
        default[row, col + 1 :] == explicit[row, col + 1 :]
    ).all()
    assert (default[row, col + 1 :] == (eos[0] if pad is None else pad)).all()  # stopped: only pad after its EOS
