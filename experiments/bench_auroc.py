"""AUROC benchmark: sgm_jax.experts.auroc vs the apple/ml-aura way (sklearn roc_auc_score, 10 neurons at a time).

Part 1, side by side in one process on the same responses (N samples x M neurons,
float32 Gaussian with a per-neuron label shift, random 0/1 labels): the reference
calls `roc_auc_score(labels[:, None].repeat(10, 1), chunk, average=None)` on
consecutive chunks of 10 columns, as ml-aura does; sgm_jax.auroc takes the whole
matrix. Prints the median seconds of each (sgm_jax's after a warm-up call that
compiles), wall and CPU (summed over threads: the fair figure when other work
shares the cores), the speed-up and the largest absolute difference between the results.

Part 2, sgm_jax.auroc alone at N x big-M (default 2000 x 1,000,000 float32, 8 GB):
one timed call after a warm-up on a slice, reported as neurons per second.

    python experiments/bench_auroc.py [--samples 2000] [--neurons 20000] [--big-m 1000000]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import jax
import numpy as np
from sklearn.metrics import roc_auc_score

from sgm_jax.experts.auroc import auroc


def make_data(samples: int, neurons: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, samples).astype(np.int32)
    responses = rng.standard_normal((samples, neurons), dtype=np.float32)
    shift = rng.uniform(-0.5, 0.5, neurons).astype(np.float32)
    for start in range(0, neurons, 65536):  # in slices: no second full-size temporary
        responses[labels == 1, start : start + 65536] += shift[start : start + 65536]
    return responses, labels


def sklearn_by_tens(responses: np.ndarray, labels: np.ndarray) -> np.ndarray:
    out = []
    for start in range(0, responses.shape[1], 10):
        chunk = responses[:, start : start + 10]
        out.append(roc_auc_score(labels[:, None].repeat(chunk.shape[1], 1), chunk, average=None))
    return np.concatenate(out)


def seconds(fn, repeats: int) -> tuple[float, float, object]:
    """Median wall and CPU (all threads) seconds of `fn()`, and its last result."""
    wall, cpu, result = [], [], None
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        result = fn()
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return statistics.median(wall), statistics.median(cpu), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=2000, help="N, rows (samples)")
    parser.add_argument("--neurons", type=int, default=20000, help="M for the side-by-side comparison")
    parser.add_argument("--big-m", type=int, default=1_000_000, help="M for the throughput run (0 skips it)")
    parser.add_argument("--repeats", type=int, default=5, help="timed sgm_jax calls (median is reported)")
    parser.add_argument("--sklearn-repeats", type=int, default=1, help="timed sklearn runs (median is reported)")
    args = parser.parse_args()

    print(
        f"jax {jax.__version__} on {jax.default_backend()} ({jax.device_count()} device(s)), "
        f"{os.cpu_count()} host cores, load average {os.getloadavg()[0]:.1f}"
    )
    responses, labels = make_data(args.samples, args.neurons)
    auroc(responses, labels)
    ours_s, ours_cpu, ours = seconds(lambda: auroc(responses, labels), args.repeats)
    sk_s, sk_cpu, reference = seconds(lambda: sklearn_by_tens(responses, labels), args.sklearn_repeats)
    print(f"N={args.samples} x M={args.neurons}:")
    print(
        f"  sklearn roc_auc_score, 10 columns a call: {sk_s:8.3f} s ({sk_cpu:.3f} s CPU, "
        f"median of {args.sklearn_repeats})"
    )
    print(
        f"  sgm_jax.auroc:                                    {ours_s:8.3f} s ({ours_cpu:.3f} s CPU, "
        f"median of {args.repeats}, warm)"
    )
    print(
        f"  speed-up: {sk_s / ours_s:.1f}x ({sk_cpu / ours_cpu:.1f}x in CPU seconds)   "
        f"max |difference|: {np.abs(ours - reference).max():.2e}"
    )
    del responses

    if args.big_m:
        responses, labels = make_data(args.samples, args.big_m, seed=1)
        auroc(responses[:, : args.neurons], labels)
        big_s, big_cpu, _ = seconds(lambda: auroc(responses, labels), 1)
        print(
            f"N={args.samples} x M={args.big_m} ({responses.nbytes / 2**30:.1f} GiB float32): "
            f"{big_s:.2f} s ({big_cpu:.2f} s CPU), {args.big_m / big_s:,.0f} neurons/s"
        )


if __name__ == "__main__":
    main()
