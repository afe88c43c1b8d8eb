"""Per-token cost of SafeCoDe against plain generation with SGM gates, and against SafeCoDe the PyTorch way.

One process, same random mid-size LLaVA weights (`shapes.py`), the same SGM-style gates on every side (gates in
sgm_jax, forward hooks in transformers), a batch of left-padded prompts with an image each, greedy:
- sgm_jax `generate` with gates: the baseline, and the same at twice the rows (what a second view's rows cost
  by themselves: on a compute-bound CPU about 2x, on an accelerator's memory-bound decode far less);
- sgm_jax SafeCoDe (safe branch, K guided steps on two views as extra batch rows in one jitted decode, then
  the real rows alone): the whole call, the guided phase alone and its first step alone (same buffer), and so
  the cost per guided step and per continuation token against the baseline's per-token cost; the word rule's
  early stop is off so that every row runs all K guided steps;
- transformers, as the official code runs it: each guided step a full forward of both views without a cache,
  then `generate` on the real view from the guided prefix.
Token tables (refusal set, text facts) come from the bundled organism's tokenizer, widened to the model's
vocabulary; their content does not change the cost. The shields cost their prompt's tokens in prefill, and
ECSO up to three extra generations on the answers its self-check flags: `sgm-jax compare` reports their
tokens/s on real data.

    python experiments/bench_defenses.py [--repeats 5] [--batch 4] [--new-tokens 64]
"""

from __future__ import annotations

import argparse
import tempfile

import jax
import numpy as np
import torch

import sgm_jax
from bench_generate import hook_intervention, random_intervention
from sgm_jax.defenses import FixedVerdicts, SafeCoDe
from sgm_jax.defenses.refusal_tokens import refusal_vocabulary
from sgm_jax.defenses.safecode import _decode, _sampling, _tables
from sgm_jax.models.batch import model_batch
from sgm_jax.organism.files import ORGANISM_DIR
from shapes import SHAPES
from timing import interleaved_medians


def safecode_call(model, batch, tables, settings: SafeCoDe, new_tokens: int, steps: int, after: int):
    """SafeCoDe's safe branch: `steps` guided steps, then `after` tokens on the real view, in a buffer of
    `new_tokens` (the same buffer for every call, so the caches, and so each step's work, are the same size)."""
    knobs = {
        "alpha": np.float32(settings.alpha),
        "lambda_supp": np.float32(settings.lambda_supp),
        "top_k": np.int32(settings.top_k),
        "guided_temperature": np.float32(0.0),
        "caps": np.asarray([after, after], np.int32),
        "safe": _sampling(0.0, 1.0),
        "unsafe": _sampling(0.0, 1.0),
    }
    rows = batch.input_ids.shape[0] // 2

    def run():
        out, _ = _decode(
            model,
            batch.input_ids,
            batch.attention_mask,
            batch.inputs,
            tables,
            np.zeros(rows, bool),
            np.zeros(0, np.int32),
            np.int32(0),
            jax.random.key(0),
            knobs,
            guided_steps=steps,
            buffer=new_tokens,
        )
        return np.asarray(out)

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--steps", type=int, default=5, help="SafeCoDe's guided steps K")
    args = parser.parse_args()
    shape = SHAPES["llava"]
    with tempfile.TemporaryDirectory() as directory:
        torch.manual_seed(0)
        shape.model_class(shape.config()).save_pretrained(directory)
        hf = shape.model_class.from_pretrained(directory, dtype=torch.float32, attn_implementation="eager").eval()
        model, _ = sgm_jax.load_model(directory)
    inputs = shape.inputs(args.batch, shape.length)
    noised = shape.inputs(args.batch, shape.length, seed=1)["pixel_values"]
    ids, mask, pixels = inputs["input_ids"], inputs["attention_mask"], inputs["pixel_values"]
    iv = random_intervention(model, 0)
    gated = sgm_jax.intervene(model, iv)
    hook_intervention(hf, iv, "cpu")
    _, processor = sgm_jax.load_model(str(ORGANISM_DIR))
    tables = _tables(refusal_vocabulary(processor.tokenizer, len(processor.tokenizer)))
    for piece in ("lead_space", "space_after_run", "second_run", "corrupt", "starts_s"):
        tables[piece] = np.zeros_like(tables[piece])  # no early stop, no replacement: every row runs all K steps
    settings = SafeCoDe(FixedVerdicts(False), max_steps=args.steps)
    two_views = model_batch(
        gated,
        {
            "input_ids": np.concatenate([ids, ids]),
            "attention_mask": np.concatenate([mask, mask]),
            "pixel_values": np.concatenate([pixels, noised]),
        },
    )
    new, k = args.new_tokens, args.steps

    def plain(n, views=1):
        return lambda: sgm_jax.generate(
            gated,
            np.tile(ids, (views, 1)),
            attention_mask=np.tile(mask, (views, 1)),
            max_new_tokens=n,
            eos_token_id=[],
            pixel_values=np.tile(pixels, (views, 1, 1, 1)),
        )

    t_ids, t_mask = torch.tensor(ids), torch.tensor(mask)
    t_pixels = torch.tensor(np.concatenate([pixels, noised]))

    def torch_safecode():
        with torch.no_grad():
            prefix = torch.zeros((args.batch, 0), dtype=torch.long)
            for _ in range(k):  # the official loop: full forwards of both views, no cache
                both = torch.cat([t_ids, prefix], 1).repeat(2, 1)
                both_mask = torch.cat([t_mask, torch.ones_like(prefix)], 1).repeat(2, 1)
                z = hf(input_ids=both, attention_mask=both_mask, pixel_values=t_pixels).logits[:, -1]
                p = torch.softmax(z[: args.batch] - settings.alpha / 2 * z[args.batch :], -1)
                prefix = torch.cat([prefix, p.argmax(-1, keepdim=True)], 1)
            hf.generate(
                input_ids=torch.cat([t_ids, prefix], 1),
                attention_mask=torch.cat([t_mask, torch.ones_like(prefix)], 1),
                pixel_values=t_pixels[: args.batch],
                do_sample=False,
                min_new_tokens=new - k,
                max_new_tokens=new - k,
                pad_token_id=0,
            )

    calls = {
        "plain": plain(new),
        "plain_k": plain(k),
        "plain_2x_rows": plain(new, views=2),
        "plain_2x_rows_k": plain(k, views=2),
        "safecode": safecode_call(gated, two_views, tables, settings, new, k, new - k),
        "safecode_k": safecode_call(gated, two_views, tables, settings, new, k, 0),
        "safecode_1": safecode_call(gated, two_views, tables, settings, new, 1, 0),
        "torch_safecode": torch_safecode,
    }
    t = interleaved_medians(calls, args.repeats, warmup=1)
    per_plain = (t["plain"] - t["plain_k"]) / (new - k)
    per_plain_2x = (t["plain_2x_rows"] - t["plain_2x_rows_k"]) / (new - k)
    guided = (t["safecode_k"] - t["safecode_1"]) / (k - 1)
    continuation = (t["safecode"] - t["safecode_k"]) / (new - k)
    print(f"{shape.description}, batch {args.batch}, {new} new tokens, K = {k} guided steps, greedy, float32")
    print(f"devices: torch cpu ({torch.get_num_threads()} threads), jax {jax.devices()[0].platform}")
    for name, seconds in t.items():
        print(f"  {name:15s} {seconds * 1e3:9.1f} ms")
    print(f"plain decode step (gates)       : {per_plain * 1e3:7.2f} ms/token")
    print(
        f"SafeCoDe's first {k} tokens (two views, prefill included): {t['safecode_k'] * 1e3:.1f} ms, "
        f"{t['safecode_k'] / t['plain_k']:.2f}x plain's first {k}"
    )
    print(f"plain step at twice the rows     : {per_plain_2x * 1e3:7.2f} ms ({per_plain_2x / per_plain:.2f}x)")
    print(
        f"SafeCoDe guided step (two views) : {guided * 1e3:7.2f} ms ({guided / per_plain:.2f}x a plain step, "
        f"{guided / per_plain_2x:.2f}x a plain step at twice the rows)"
    )
    ratio = continuation / per_plain
    print(f"SafeCoDe continuation step       : {continuation * 1e3:7.2f} ms ({ratio:.2f}x a plain step)")
    print(f"SafeCoDe whole call vs plain     : {t['safecode'] / t['plain']:.2f}x")
    print(f"SafeCoDe sgm_jax vs PyTorch way  : {t['torch_safecode'] / t['safecode']:.2f}x faster")


if __name__ == "__main__":
    main()
