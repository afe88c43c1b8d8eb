"""Tiny random transformers checkpoints built in process, and the references the tests compare against."""

from __future__ import annotations

import contextlib
import json
import os
from importlib.resources import files

import numpy as np
import torch
from safetensors.torch import save_file
from transformers import CLIPVisionConfig, LlamaConfig, LlamaForCausalLM, LlavaConfig, LlavaForConditionalGeneration

IMAGE_TOKEN = 99
# Llama-3's RoPE frequency scaling with a short original context, so that all three of its frequency bands occur.
LLAMA3 = {
    "rope_type": "llama3",
    "rope_theta": 500000.0,
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 64,
}


def llava_config(
    *,
    kv_heads=4,
    feature_layer=-2,
    strategy="default",
    attention_bias=False,
    mlp_bias=False,
    projector_bias=True,
    tie=False,
    vision_layers=3,
    text_layers=2,
) -> LlavaConfig:
    vision = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=vision_layers,
        num_attention_heads=4,
        image_size=28,
        patch_size=7,
        projection_dim=16,
    )
    text = LlamaConfig(
        hidden_size=32,
        intermediate_size=56,
        num_hidden_layers=text_layers,
        num_attention_heads=4,
        num_key_value_heads=kv_heads,
        vocab_size=100,
        attention_bias=attention_bias,
        mlp_bias=mlp_bias,
        rms_norm_eps=1e-5,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
    )
    return LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=IMAGE_TOKEN,
        vision_feature_layer=feature_layer,
        vision_feature_select_strategy=strategy,
        multimodal_projector_bias=projector_bias,
        tie_word_embeddings=tie,
    )


def randomize(model: torch.nn.Module, seed: int) -> None:
    """Replace HF's near-zero init with weights that make every layer matter (unit-scale activations)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if "norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.2 * noise)
            elif p.ndim == 1:
                p.copy_(0.1 * noise)
            else:
                p.copy_(noise / np.sqrt(np.prod(p.shape[1:])))


def save_llava(directory: str, config: LlavaConfig, seed: int = 0, **save_kwargs) -> str:
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config)
    randomize(model, seed)
    if config.tie_word_embeddings:
        model.tie_weights()
    model.save_pretrained(directory, **save_kwargs)
    return directory


def save_llama(
    directory: str, seed: int = 0, *, legacy_rope_theta: float | None = None, kv_heads=2, rope_parameters=None
) -> str:
    """A text-only Llama; with `legacy_rope_theta`, config.json uses the old top-level `rope_theta` field."""
    config = LlamaConfig(
        **({} if rope_parameters is None else {"rope_parameters": rope_parameters}),
        hidden_size=32,
        intermediate_size=56,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=kv_heads,
        vocab_size=120,
        rms_norm_eps=1e-5,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    randomize(model, seed)
    model.save_pretrained(directory)
    if legacy_rope_theta is not None:
        path = os.path.join(directory, "config.json")
        with open(path) as f:
            cfg = json.load(f)
        cfg.pop("rope_parameters")
        cfg["rope_theta"] = legacy_rope_theta
        with open(path, "w") as f:
            json.dump(cfg, f)
    return directory


def load_reference(directory: str, cls=LlavaForConditionalGeneration):
    return cls.from_pretrained(directory, dtype=torch.float32, attn_implementation="eager").eval()


def save_tiny(directory, seed: int, *, processor: bool = False, **config) -> str:
    """`save_llava` of `llava_config(**config)` into `directory`, with `save_processor` beside it if asked."""
    directory = save_llava(str(directory), llava_config(**config), seed=seed)
    if processor:
        save_processor(directory, strategy=config.get("strategy", "default"))
    return directory


def save_tiny_with_data(root, seed: int, samples: int, *, data_seed: int = 0, **config) -> tuple[str, str]:
    """A tiny LLaVA with its processor in `root`/ckpt, and a `write_dataset` of `samples` rows in `root`/data."""
    directory = save_tiny(os.path.join(str(root), "ckpt"), seed, processor=True, **config)
    return directory, write_dataset(os.path.join(str(root), "data"), samples, seed=data_seed)


def llava_and_reference(directory, seed: int, **config):
    """A tiny LLaVA saved into `directory`, loaded by sgm_jax and as the transformers reference: (model, hf)."""
    import sgm_jax

    directory = save_tiny(directory, seed, **config)
    return sgm_jax.load_model(directory)[0], load_reference(directory)


@contextlib.contextmanager
def gate_hooks(hf: torch.nn.Module, alphas: dict, transports: dict | None = None):
    """transformers' side of sgm_jax's gates: each site's alphas multiply the output of the HF module it names.

    A `:in` site multiplies the module's input instead (a forward pre-hook); attention, which returns
    (output, weights), has its output multiplied. A transport (`[4, width]`: scale, shift, low, high) then maps
    the output as apple/ml-act's hooks do: `scale a + shift` where `low < a < high`. The hooks are removed on
    leaving the block.
    """
    modules, handles = dict(hf.named_modules()), []

    def changed(out, alpha, transport):
        if alpha is not None:
            out = out * alpha
        if transport is not None:
            scale, shift, low, high = transport
            inside = ((low < out) & (out < high)).to(out.dtype)
            out = inside * (out * scale + shift) + (1 - inside) * out
        return out

    transports = transports or {}
    try:
        for site in dict.fromkeys([*alphas, *transports]):
            module = modules[site.removesuffix(":in")]
            alpha = torch.tensor(alphas[site]) if site in alphas else None
            transport = torch.tensor(transports[site]) if site in transports else None
            if site.endswith(":in"):
                handles.append(module.register_forward_pre_hook(lambda m, args, a=alpha: (args[0] * a,)))
            else:
                handles.append(
                    module.register_forward_hook(
                        lambda m, args, out, a=alpha, t=transport: (
                            (changed(out[0], a, t),) + tuple(out[1:]) if isinstance(out, tuple) else changed(out, a, t)
                        )
                    )
                )
        yield
    finally:
        for handle in handles:
            handle.remove()


@contextlib.contextmanager
def direction_hooks(hf: torch.nn.Module, layers: str, writers=(), ablate=None, add=None):
    """andyrdt/refusal_direction's hooks on transformers: with `ablate` (a direction), `x - (x . r) r` (`r` unit)
    on the input of every decoder layer under `layers` and on the output of each of `writers`; with
    `add` = (layer, vector), the vector added to that layer's input. Removed on leaving the block."""
    modules, handles = dict(hf.named_modules()), []

    def project(x, r):
        return x - (x @ r).unsqueeze(-1) * r

    try:
        if ablate is not None:
            r = torch.tensor(np.asarray(ablate) / np.linalg.norm(ablate), dtype=torch.float32)
            for name, module in modules.items():
                if name.startswith(layers + ".") and name[len(layers) + 1 :].isdigit():
                    handles.append(
                        module.register_forward_pre_hook(_first_input(lambda x: project(x, r)), with_kwargs=True)
                    )
            for name in writers:
                handles.append(
                    modules[name].register_forward_hook(
                        lambda m, a, out: (
                            (project(out[0], r),) + tuple(out[1:]) if isinstance(out, tuple) else project(out, r)
                        )
                    )
                )
        if add is not None:
            layer, vector = add
            v = torch.tensor(np.asarray(vector), dtype=torch.float32)
            handles.append(
                modules[f"{layers}.{layer}"].register_forward_pre_hook(_first_input(lambda x: x + v), with_kwargs=True)
            )
        yield
    finally:
        for handle in handles:
            handle.remove()


def _first_input(change):
    """A pre-hook (with kwargs) changing a decoder layer's hidden states, passed positionally or by name."""

    def hook(module, args, kwargs):
        if args:
            return (change(args[0]), *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": change(kwargs["hidden_states"])}

    return hook


def generate_positions(mask: np.ndarray) -> np.ndarray:
    """Position ids as transformers `generate` builds them for left-padded rows."""
    pos = np.cumsum(mask, axis=-1) - 1
    return np.where(mask > 0, pos, 1)


def reference_logits(hf: torch.nn.Module, ids: np.ndarray, mask: np.ndarray, pixels: np.ndarray) -> np.ndarray:
    """transformers' logits for a left-padded multimodal batch, at the positions `generate` gives its rows."""
    with torch.no_grad():
        return hf(
            input_ids=torch.tensor(ids),
            pixel_values=torch.tensor(pixels),
            attention_mask=torch.tensor(mask),
            position_ids=torch.tensor(generate_positions(mask)),
        ).logits.numpy()


def multimodal_batch(seed: int, *, pads: list[int], length: int, features_per_image: int, vocab: int = 99):
    """Left-padded rows, each with one image whose `<image>` tokens start after a short text prefix."""
    rng = np.random.default_rng(seed)
    batch = len(pads)
    ids = rng.integers(0, vocab, (batch, length))
    mask = np.ones((batch, length), np.int64)
    for row, pad in enumerate(pads):
        mask[row, :pad] = 0
        ids[row, :pad] = 0
        ids[row, pad + 2 : pad + 2 + features_per_image] = IMAGE_TOKEN
    pixels = rng.standard_normal((batch, 3, 28, 28)).astype(np.float32)
    return ids, mask, pixels


def rewrite_keys(directory: str, out: str, rename) -> str:
    """Copy a single-file checkpoint with every tensor key passed through `rename`."""
    from safetensors import safe_open

    os.makedirs(out, exist_ok=True)
    with safe_open(os.path.join(directory, "model.safetensors"), "pt") as f:
        tensors = {rename(k): f.get_tensor(k) for k in f.keys()}
    save_file(
        {k: v.contiguous() for k, v in tensors.items() if k is not None},
        os.path.join(out, "model.safetensors"),
        metadata={"format": "pt"},
    )
    for name in os.listdir(directory):
        if name.endswith(".json"):
            with open(os.path.join(directory, name)) as src, open(os.path.join(out, name), "w") as dst:
                dst.write(src.read())
    return out


# LLaVA-1.5's conversation format, as the bundled organism ships it (written by experiments/train_organism.py).
CHAT_TEMPLATE = (files("sgm_jax.bundled") / "organism" / "chat_template.jinja").read_text()


def tiny_tokenizer():
    """A BPE tokenizer over a small corpus with `<s>`, `</s>`, `<unk>` (also the pad) and `<image>`."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    corpus = [
        "a red square above a blue circle",
        "describe the picture please",
        "USER: ASSISTANT:",
        "three green triangles on the left",
        "that is a bad word and a nice word",
    ]
    tok.train_from_iterator(corpus * 20, trainers.BpeTrainer(vocab_size=90, special_tokens=["<unk>", "<s>", "</s>"]))
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<unk>"
    )
    tokenizer.add_special_tokens({"additional_special_tokens": ["<image>"]})
    return tokenizer


def point_image_token(directory: str, tokenizer) -> None:
    """Point config.json's `image_token_index` at the tokenizer's `<image>` id."""
    path = os.path.join(directory, "config.json")
    with open(path) as f:
        config = json.load(f)
    config["image_token_index"] = tokenizer.convert_tokens_to_ids("<image>")
    with open(path, "w") as f:
        json.dump(config, f)


def save_processor(directory: str, strategy: str = "default") -> None:
    """`tiny_tokenizer`, a CLIP image processor and a LLaVA chat template, saved beside the model; `strategy` is
    the config's `vision_feature_select_strategy` (with "full", an image's tokens include the CLS feature).

    The config's `image_token_index` is pointed at the tokenizer's `<image>` id.
    """
    from transformers import CLIPImageProcessorPil, LlavaProcessor

    tokenizer = tiny_tokenizer()
    point_image_token(directory, tokenizer)
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28}, image_mean=[0.5] * 3, image_std=[0.25] * 3
    )
    LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=7,
        vision_feature_select_strategy=strategy,
        image_token="<image>",
        num_additional_image_tokens=1,
        chat_template=CHAT_TEMPLATE,
    ).save_pretrained(directory)


def write_dataset(directory: str, n: int, seed: int = 0, name: str = "data.jsonl", *, uniform: bool = False) -> str:
    """A labelled native-JSONL dataset with PNG images: toxic rows get a bright image and a 'bad' response.

    Prompts and image sizes vary (several length buckets and image grids) unless `uniform`, where every row has
    the same prompt and image size, so each command compiles its programs once."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    os.makedirs(os.path.join(directory, "images"), exist_ok=True)
    rows = []
    for i in range(n):
        label = int(i % 3 == 0)
        height, repeats = (24, 0) if uniform else (20 + i % 7, i % 4)
        pixels = rng.integers(0, 256 if label else 128, (height, 24, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(os.path.join(directory, "images", f"{i}.png"))
        words = "that is a bad word" if label else "a red square above a blue circle"
        rows.append(
            {
                "id": f"s{i}",
                "image": f"images/{i}.png",
                "prompt": "describe the picture please" + " please" * repeats,
                "response": words,
                "label": label,
                "category": "c" + str(i % 2),
                "split": "train" if i % 5 else "test",
            }
        )
    path = os.path.join(directory, name)
    with open(path, "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    return path


def chat_rows(processor, rows, seed: int = 0) -> tuple[list[str], list[list]]:
    """Chat prompts rendered by the processor's template and random RGB images, for rows `(text, [(h, w), ...])`
    whose images come before the text: the texts and each row's images."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    texts, images = [], []
    for prompt, sizes in rows:
        content = [{"type": "image"}] * len(sizes) + [{"type": "text", "text": prompt}]
        chat = [{"role": "user", "content": content}]
        texts.append(processor.apply_chat_template(chat, tokenize=False, add_generation_prompt=True))
        images.append([Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in sizes])
    return texts, images


def edit_config(directory: str, edit) -> str:
    """Rewrite `directory`'s config.json through `edit(config_dict)` (which changes it in place)."""
    path = os.path.join(directory, "config.json")
    with open(path) as f:
        config = json.load(f)
    edit(config)
    with open(path, "w") as f:
        json.dump(config, f)
    return directory


def assert_generate_matches(model, hf, batch: dict, iv, *, eos: int, pad: int, new_tokens: int = 6, before=None):
    """Greedy `sgm_jax.generate` equals transformers `generate` token for token on `batch`, without and with the
    intervention `iv` (forward hooks on the transformers side); `before()` runs before each transformers call."""
    import sgm_jax

    images = {k: v for k, v in batch.items() if k != "input_ids"}
    for gated, alphas, transports in ((model, {}, {}), (sgm_jax.intervene(model, iv), iv.alphas, iv.transports)):
        ours = sgm_jax.generate(
            gated, batch["input_ids"], max_new_tokens=new_tokens, eos_token_id=eos, pad_token_id=pad, **images
        )
        if before is not None:
            before()
        with gate_hooks(hf, alphas, transports), torch.no_grad():
            ref = hf.generate(
                **{k: torch.tensor(v) for k, v in batch.items()},
                max_new_tokens=new_tokens,
                do_sample=False,
                eos_token_id=eos,
                pad_token_id=pad,
            )
        np.testing.assert_array_equal(ours, ref[:, batch["input_ids"].shape[1] :].numpy()[:, : ours.shape[1]])
