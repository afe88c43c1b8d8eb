"""Sweep benchmark on the model organism: what K settings cost under one compile, and against a one-by-one loop.

1. `sgm_jax.sweep` of a next-token score (the log-probability of the insult lexicon after each prompt of a batch
   of 32 organism prompts) over K = 8, 100 and 1,000 AurA settings (thresholds x strengths from the organism's
   own scores, each on a random half of its sites, so gate patterns differ), each K in a fresh process: compiles
   during the sweep, peak host memory (max RSS), seconds per setting, for the sweep (a fresh lambda, chunks of
   --chunk settings) and for the one-by-one loop a user writes (`sgm_jax.intervene` + a jitted call per setting).
2. The full measurement of settings (answers, harmful rate, over-refusal, multiple-choice accuracy, perplexity,
   answer fluency) on the `sgm-jax sweep --demo` share of the test split, compiles included: settings/s vmapped,
   16 at a time, against the same settings one by one through the same compiled functions, each on its
   `sgm_jax.intervene`d model (a new gate pattern compiles again), and one by one on the sweep's gates (one compile).

    python experiments/bench_sweep.py [--ks 8 100 1000] [--chunk 50] [--measure 32]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np


def organism_inputs(directory: str):
    """The organism, its scores at SGM's sites (collected on its train split), a prompt batch, the lexicon ids."""
    from sgm_jax.data.encode import encode
    from sgm_jax.data.readers.native import read_jsonl
    from sgm_jax.data.synthetic import LEXICON
    from sgm_jax.decoding.batching import collate, pad_token_id
    from sgm_jax.experts.scores import load_scores, save_scores, score_store
    from sgm_jax.models.batch import model_batch
    from sgm_jax.organism.files import load_organism, write_organism_data
    from sgm_jax.responses.collect import collect_to_store
    from sgm_jax.responses.sites import default_sites

    paths = write_organism_data(os.path.join(directory, "data"))
    model, processor = load_organism()
    scores_path = os.path.join(directory, "scores.safetensors")
    if not os.path.exists(scores_path):
        store = collect_to_store(
            model,
            processor,
            read_jsonl(paths["train.jsonl"]),
            os.path.join(directory, "store"),
            sites=default_sites(model),
            batch_size=32,
            progress=False,
        )
        save_scores(scores_path, score_store(store, progress=False), {})
    scores, _ = load_scores(scores_path)
    prompts = [s for s in read_jsonl(paths["test.jsonl"]) if s.label == 1][:32]
    pad = pad_token_id(processor)
    batch = model_batch(model, collate([encode(s, processor) for s in prompts], pad), pad)
    tokenizer = processor.tokenizer
    lexicon = np.asarray([tokenizer.convert_tokens_to_ids(w) for w in LEXICON], np.int32)
    return model, processor, scores, batch, lexicon, paths


def settings(scores, k: int):
    import sgm_jax

    rng = np.random.default_rng(0)
    out = []
    sites = list(scores)
    for _ in range(k):
        threshold, strength = 0.5 + 0.3 * rng.random(), 0.5 + 1.5 * rng.random()
        chosen = [s for s in sites if rng.random() < 0.5] or sites[:1]
        out.append(sgm_jax.aura({s: scores[s] for s in chosen}, threshold=threshold).with_strength(strength))
    return out


def one_k(k: int, chunk: int, directory: str, loop: bool) -> dict:
    """Run in a fresh process: the sweep (or the loop) of K settings, its compiles, time and peak memory."""
    import jax
    import jax.numpy as jnp

    import sgm_jax
    from sgm_jax.runtime.compiles import count_compiles

    model, _, scores, batch, lexicon, _ = organism_inputs(directory)
    ivs = settings(scores, k)
    sites = [s for s in scores]
    ids, mask, images = batch.input_ids, batch.attention_mask, batch.inputs

    def lexicon_logprob(m, ids, mask, images):
        logits = m.forward(ids, attention_mask=mask, **images).logits[:, -1].astype(jnp.float32)
        return jax.nn.logsumexp(jax.nn.log_softmax(logits)[:, lexicon], axis=-1)

    start = time.perf_counter()
    with count_compiles() as compiles:
        if loop:
            step = jax.jit(lexicon_logprob)
            out = np.stack([np.asarray(step(sgm_jax.intervene(model, iv), ids, mask, images)) for iv in ivs])
        else:
            out = sgm_jax.sweep(
                model, ivs, lambda m: lexicon_logprob(m, ids, mask, images), sites=sites, chunk_size=min(chunk, k)
            )
    seconds = time.perf_counter() - start
    assert out.shape == (k, len(ids))
    return {
        "k": k,
        "way": "loop" if loop else "sweep",
        "seconds": seconds,
        "per_setting_ms": 1e3 * seconds / k,
        "compiles": compiles.count,
        "compile_seconds": compiles.seconds,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def measured(count: int, directory: str) -> dict:
    """Settings/s of the full measurement, vmapped (chunks of 16) and one by one, on the demo's share of data."""
    from sgm_jax.data.readers.native import read_jsonl
    from sgm_jax.judges import LexiconJudge
    from sgm_jax.sweeps.evaluation import SettingsEvaluator, SweepOptions
    from sgm_jax.sweeps.organism import evaluation_share

    model, processor, scores, _, _, paths = organism_inputs(directory)
    with open(paths["neutral.txt"], encoding="utf-8") as f:
        neutral = [line.strip() for line in f if line.strip()]
    samples, neutral = evaluation_share(read_jsonl(paths["test.jsonl"]), read_jsonl(paths["mcq_test.jsonl"]), neutral)
    options = SweepOptions(max_new_tokens=20, batch_size=32, chunk_size=16)
    evaluator = SettingsEvaluator(
        model, processor, samples, neutral, LexiconJudge(paths["lexicon.txt"]), sites=list(scores), options=options
    )
    ivs = settings(scores, count)
    ways = {
        "vmapped": {"vmapped": True},
        "one by one": {"vmapped": False},
        "one by one, one compile": {"vmapped": False, "shared_compile": True},
    }
    timings = {}
    for way, how in ways.items():
        start = time.perf_counter()
        for i in range(0, count, options.chunk_size):
            evaluator.measure(ivs[i : i + options.chunk_size], **how)
        timings[way] = time.perf_counter() - start
    return {
        "settings": count,
        "prompts": sum(1 for s in samples if not s.options),
        "settings_per_s": {way: count / t for way, t in timings.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ks", type=int, nargs="+", default=[8, 100, 1000], help="sweep sizes")
    parser.add_argument("--chunk", type=int, default=50, help="settings per compiled call (default 50)")
    parser.add_argument("--measure", type=int, default=32, help="settings measured in full each way (default 32)")
    parser.add_argument("--work", help="a folder for the organism's data and scores (default: a temporary one)")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # "K,loop" in a child process
    args = parser.parse_args()
    directory = args.work or tempfile.mkdtemp(prefix="bench-sweep-")
    if args.one:
        k, loop = args.one.split(",")
        print(json.dumps(one_k(int(k), args.chunk, directory, loop == "1")))
        return
    organism_inputs(directory)  # data and scores once, shared by the children
    rows = []
    for k in args.ks:
        for loop in (False, True):
            if loop and k > 100:
                continue  # the loop's cost per setting is flat; 1,000 of them add nothing but minutes
            child = [sys.executable, __file__, "--one", f"{k},{int(loop)}", "--chunk", str(args.chunk)]
            child += ["--work", directory]
            done = subprocess.run(child, capture_output=True, text=True, check=True)
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
            r = rows[-1]
            print(
                f"K={r['k']:5d} {r['way']:5s}: {r['per_setting_ms']:8.2f} ms/setting, {r['compiles']:3d} compiles "
                f"({r['compile_seconds']:.1f} s), peak RSS {r['peak_rss_mb']:.0f} MB, total {r['seconds']:.1f} s",
                flush=True,
            )
    full = measured(args.measure, directory)
    rates = full["settings_per_s"]
    print(f"full measurement of {full['settings']} settings on {full['prompts']} prompts, MCQ and neutral texts:")
    for way, rate in rates.items():
        print(f"  {way:24s} {rate:6.2f} settings/s ({rate / rates['vmapped']:.2f}x the vmapped rate)")


if __name__ == "__main__":
    main()
