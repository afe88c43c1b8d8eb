"""Per-token cost of concept steering (ActAdd, MOP, DACO) against plain generation, against the same edits as
forward hooks on transformers, and SAE training throughput; one process, the same random weights.

The mid-size LLaVA of `shapes.py` (Llama 512 wide x 6 layers), greedy, float32, the edit at `--layers` (default:
one middle layer, as DACO steers), at every position of prefill and decode:
- ActAdd: a fixed vector added (the cheapest residual edit, a reference point);
- MOP: an elastic-net code over a dictionary of `--concepts` atoms by FISTA (`--iters`), screened to each
  token's top `--screen` atoms, `--undesirable` atoms removed;
- DACO: a TopK SAE of `--sae-atoms` atoms (k = `--k`), `--undesirable` atoms cancelled and 16 promoted.
The per-token figure is the decode phase's: (time of N new tokens - time of 1) / (N - 1), so the prefill does
not hide it. SAE training: tokens/s of one optax Adam step (encode, decode, gradient, renormalised decoder) on
random activations, against the same step in PyTorch.

    python experiments/bench_steering.py [--repeats 5] [--batch 4] [--new-tokens 48]
"""

from __future__ import annotations

import argparse
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
import optax
import torch

import sgm_jax
from sgm_jax.models.site import Steering
from sgm_jax.steering import SAE, SAEConfig, SAEEdit, SparseCodingEdit, SparseCodingSettings, steer
from sgm_jax.steering.annotate import DESIRABLE, UNDESIRABLE, Annotation
from sgm_jax.steering.sae import init_params
from sgm_jax.steering.sae_training import _step_fn
from shapes import SHAPES
from timing import interleaved_medians


class AddVector(sgm_jax.steering.ResidualEdit):
    """ActAdd: `h + v` at every position."""

    def __init__(self, vector):
        self.width = vector.shape[0]
        self.vector = Steering(jnp.asarray(vector))

    def __call__(self, h):
        return h + self.vector[...].astype(h.dtype)

    def describe(self):
        return {"edit": "actadd"}


def unit(rows):
    return (rows / np.linalg.norm(rows, axis=-1, keepdims=True)).astype(np.float32)


def torch_hooks(hf, layers, edit):
    modules = dict(hf.named_modules())
    return [
        modules[f"model.language_model.layers.{layer}"].register_forward_hook(
            lambda m, a, out: (edit(out[0]),) + tuple(out[1:]) if isinstance(out, tuple) else edit(out)
        )
        for layer in layers
    ]


def torch_mop(atoms, undesirable, settings):
    D = torch.tensor(atoms)
    step = float(1.0 / (np.linalg.norm(atoms, 2) ** 2))
    u = torch.tensor(undesirable, dtype=torch.float32)
    keep = torch.tensor(undesirable)
    lam, tau = settings.lam, settings.tau

    def edit(h):
        norm = h.norm(dim=-1, keepdim=True)
        x = h / norm
        score = (x @ D.T).abs().masked_fill(keep, float("inf"))
        index = score.topk(settings.screen, dim=-1).indices
        sub = D[index]  # [..., M, d]
        c = y = torch.zeros(index.shape)
        t = 1.0
        for _ in range(settings.iters):
            grad = torch.einsum("...w,...mw->...m", torch.einsum("...m,...mw->...w", y, sub) - x, sub)
            v = y - step * grad
            c_next = torch.sign(v) * torch.clamp(v.abs() - lam * tau * step, min=0) / (1 + lam * (1 - tau) * step)
            t_next = (1 + np.sqrt(1 + 4 * t * t)) / 2
            y = c_next + ((t - 1) / t_next) * (c_next - c)
            c, t = c_next, t_next
        full = torch.zeros(h.shape[:-1] + (D.shape[0],)).scatter(-1, index, c * norm)
        return h - (full * u) @ D

    return edit


def torch_sae(sae, annotation, gamma):
    p = {k: torch.tensor(v) for k, v in sae.params.items()}
    index = torch.tensor(np.flatnonzero(annotation.labels != 0))
    rows, undesirable = p["W_dec"][index], torch.tensor(annotation.undesirable[index.numpy()])

    def edit(z):
        pre = torch.relu((z - p["b_dec"]) @ p["W_enc"] + p["b_enc"])
        top = pre.topk(sae.config.k, dim=-1)
        codes = torch.zeros_like(pre).scatter(-1, top.indices, top.values)[..., index]
        return z + torch.where(undesirable, -codes, torch.tensor(gamma)) @ rows

    return edit


def training_throughput(width, atoms, k, batch, repeats):
    """Tokens/s of one SAE training step: sgm_jax (optax, jitted) and PyTorch (Adam, eager)."""
    config = SAEConfig(width, atoms, "topk", k)
    rng = np.random.default_rng(0)
    z = rng.normal(size=(batch, width)).astype(np.float32)
    params = jax.tree.map(jnp.asarray, init_params(config, mean=z.mean(0), concept_atoms=None, seed=0))
    tx = optax.adam(1e-3)
    step = _step_fn(config, tx)
    state = [params, tx.init(params)]
    zj = jnp.asarray(z)

    def run_jax():
        state[0], state[1], loss, _, _ = step(state[0], state[1], zj)
        loss.block_until_ready()

    tp = {k2: torch.tensor(np.asarray(v), requires_grad=True) for k2, v in params.items()}
    opt = torch.optim.Adam(tp.values(), lr=1e-3)
    zt = torch.tensor(z)

    def run_torch():
        pre = torch.relu((zt - tp["b_dec"]) @ tp["W_enc"] + tp["b_enc"])
        top = pre.topk(k, dim=-1)
        f = torch.zeros_like(pre).scatter(-1, top.indices, top.values)
        loss = ((zt - (f @ tp["W_dec"] + tp["b_dec"])) ** 2).sum(-1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            tp["W_dec"] /= tp["W_dec"].norm(dim=-1, keepdim=True)

    times = interleaved_medians({"sgm_jax": run_jax, "torch": run_torch}, repeats)
    return {name: batch / seconds for name, seconds in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per side (median is reported)")
    parser.add_argument("--batch", type=int, default=4, help="prompts per call")
    parser.add_argument("--new-tokens", type=int, default=48, help="tokens generated per prompt")
    parser.add_argument("--layers", type=int, nargs="+", default=[3], help="steered decoder layers (default: 3)")
    parser.add_argument("--concepts", type=int, default=2048, help="MOP dictionary atoms (default: 2048)")
    parser.add_argument("--screen", type=int, default=256, help="MOP's screened atoms per token (default: 256)")
    parser.add_argument("--iters", type=int, default=50, help="MOP's FISTA iterations (default: 50)")
    parser.add_argument("--sae-atoms", type=int, default=4096, help="DACO SAE atoms (default: 4096)")
    parser.add_argument("--k", type=int, default=64, help="DACO SAE TopK (default: 64)")
    parser.add_argument("--undesirable", type=int, default=64, help="undesirable atoms (default: 64)")
    parser.add_argument("--train-batch", type=int, default=4096, help="tokens per SAE training step (4096)")
    args = parser.parse_args()

    shape = SHAPES["llava"]
    with tempfile.TemporaryDirectory() as directory:
        torch.manual_seed(0)
        shape.model_class(shape.config()).save_pretrained(directory)
        hf = shape.model_class.from_pretrained(directory, dtype=torch.float32, attn_implementation="eager").eval()
        model, _ = sgm_jax.load_model(directory)
    width = model.spec.text.hidden_size
    rng = np.random.default_rng(1)
    atoms = unit(rng.normal(size=(args.concepts, width)))
    undesirable = np.zeros(args.concepts, bool)
    undesirable[: args.undesirable] = True
    mop_settings = SparseCodingSettings(lam=0.05, iters=args.iters, screen=args.screen)
    config = SAEConfig(width, args.sae_atoms, "topk", args.k)
    sae = SAE("", config, init_params(config, mean=np.zeros(width), concept_atoms=atoms[:512], seed=0))
    labels = np.zeros(args.sae_atoms, np.int8)
    labels[: args.undesirable], labels[args.undesirable : args.undesirable + 16] = UNDESIRABLE, DESIRABLE
    annotation = Annotation(
        labels, np.zeros(args.sae_atoms, np.float32), np.zeros(args.sae_atoms, np.float32), 0.5, sae.digest()
    )
    vector = rng.normal(size=width).astype(np.float32) * 0.1
    sites = [f"model.language_model.layers.{layer}" for layer in args.layers]
    edits = {
        "plain": None,
        "actadd": (lambda: AddVector(vector), lambda: lambda h: h + torch.tensor(vector)),
        "mop": (
            lambda: SparseCodingEdit(
                atoms, np.zeros(width, np.float32), undesirable, np.zeros_like(undesirable), mop_settings
            ),
            lambda: torch_mop(atoms, undesirable, mop_settings),
        ),
        "daco": (lambda: SAEEdit(sae, annotation, gamma=0.5), lambda: torch_sae(sae, annotation, 0.5)),
    }
    inputs = shape.inputs(args.batch, shape.length)
    ids, mask = inputs.pop("input_ids"), inputs.pop("attention_mask")
    t_inputs = {k: torch.tensor(v) for k, v in dict(inputs, input_ids=ids, attention_mask=mask).items()}
    new = args.new_tokens

    def jax_call(target, n):
        return lambda: sgm_jax.generate(
            target, ids, attention_mask=mask, max_new_tokens=n, temperature=0.0, eos_token_id=None, **inputs
        )

    def torch_call(edit, n):
        def run():
            handles = torch_hooks(hf, args.layers, edit) if edit is not None else []
            try:
                with torch.no_grad():
                    hf.generate(**t_inputs, do_sample=False, min_new_tokens=n, max_new_tokens=n, pad_token_id=0)
            finally:
                for handle in handles:
                    handle.remove()

        return run

    calls = {}
    for name, pair in edits.items():
        target = model if pair is None else steer(model, {site: pair[0]() for site in sites})
        edit = None if pair is None else pair[1]()
        for n in (1, new):
            calls[f"jax/{name}/{n}"] = jax_call(target, n)
            calls[f"torch/{name}/{n}"] = torch_call(edit, n)
    times = interleaved_medians(calls, args.repeats, warmup=1)

    def per_token(side, name):
        return (times[f"{side}/{name}/{new}"] - times[f"{side}/{name}/1"]) / (new - 1)

    print(
        f"{shape.description}, batch {args.batch} x {shape.length}-token prompts, {new} new tokens, greedy, "
        f"float32; steered layers {args.layers}; jax on {jax.devices()[0].platform}, torch {torch.get_num_threads()}"
        " threads"
    )
    print(
        f"MOP: {args.concepts} atoms, screen {args.screen}, {args.iters} FISTA iterations; DACO: TopK SAE "
        f"{args.sae_atoms} atoms, k {args.k}; {args.undesirable} undesirable atoms each"
    )
    print(
        "| edit | sgm_jax ms/token | vs plain | whole call vs plain | transformers+hooks ms/token | vs plain | "
        "sgm_jax speed-up |"
    )
    print("|---|---|---|---|---|---|---|")
    for name in edits:
        ours, theirs = per_token("jax", name), per_token("torch", name)
        whole = times[f"jax/{name}/{new}"] / times[f"jax/plain/{new}"]
        print(
            f"| {name} | {ours * 1e3:.2f} | {ours / per_token('jax', 'plain'):.3f}x | {whole:.3f}x | "
            f"{theirs * 1e3:.2f} | {theirs / per_token('torch', 'plain'):.3f}x | "
            f"{times[f'torch/{name}/{new}'] / times[f'jax/{name}/{new}']:.2f}x |"
        )
    rates = training_throughput(width, args.sae_atoms, args.k, args.train_batch, args.repeats)
    print(
        f"SAE training ({args.sae_atoms} atoms, k {args.k}, {args.train_batch} tokens a step): sgm_jax "
        f"{rates['sgm_jax']:.0f} tokens/s, PyTorch {rates['torch']:.0f} tokens/s "
        f"({rates['sgm_jax'] / rates['torch']:.2f}x)"
    )


if __name__ == "__main__":
    main()
