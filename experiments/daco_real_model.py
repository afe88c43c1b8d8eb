"""DACO on a real checkpoint (Qwen2.5-VL-7B, LLaVA-1.5-7B, ...): dictionary, SAE, annotation, then the commands
that compare it beside SGM. Nothing is downloaded: the checkpoint is a local folder (or in the HF cache), the
concepts and stimuli are yours (the paper: WordNet concepts, CC-3M pairs chosen by CLIP).

Inputs:
  --stimuli S.jsonl       image-caption pairs in the native format (prompt = the caption, image = its file)
  --concepts C.json       each concept's positives and negatives, or
  --scores X.csv --labels L.json   CLIP-style similarities (concept, stimulus, image_similarity,
                          text_similarity in (0, 1]) and each concept's label; DACO's geometric score picks
                          the 27 best and 27 worst stimuli of each concept
  --train T.jsonl         multimodal instruction data with responses for the SAE (harmful queries included)

Sized for one accelerator (bfloat16 weights, 7B: 15 GB): the dictionary is one forward pass per stimulus
(400k stimuli: about 400k short forwards, an hour or two on one H100-class chip at batch 64); the SAE reads
every token of T once into a token store (d = 3584 floats per token: 14 kB, so 10M tokens take 143 GB of disk)
and trains 32,768 atoms TopK-64 with Adam (about 3 x 2 x 32768 x 3584 FLOPs a token, 0.7 GFLOP: 50M tokens
are 35 PFLOP, under an hour at 40% of a 1-PFLOP/s chip). Online, the SAE encoder adds 32768 x 3584 MACs a
token per steered layer, about +5-12% for one layer (methods.md, section 2.6).

    python experiments/daco_real_model.py --model DIR --stimuli S.jsonl --concepts C.json --train T.jsonl \
        --layer 15 --out WORK
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys


def sgm_jax(*args: str) -> None:
    command = [sys.executable, "-m", "sgm_jax.cli", *args]
    print("$ sgm-jax " + shlex.join(args), flush=True)
    subprocess.run(command, check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="a local HF checkpoint folder (or a hub id in the cache)")
    parser.add_argument("--stimuli", required=True)
    parser.add_argument("--concepts")
    parser.add_argument("--scores")
    parser.add_argument("--labels")
    parser.add_argument("--train", required=True, action="append", help="SAE data (native JSONL); repeatable")
    parser.add_argument("--layer", type=int, default=15, help="the steered decoder layer (default: 15)")
    parser.add_argument("--decoder", default="model.language_model.layers", help="the decoder layers' site prefix")
    parser.add_argument("--atoms", type=int, default=32768)
    parser.add_argument("--k", type=int, default=64)
    parser.add_argument("--steps", type=int, default=100_000, help="SAE steps (x --batch-size tokens)")
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--eta", type=float, default=0.6)
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--out", required=True, help="work folder: every step resumes in it")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    site = f"{args.decoder}.{args.layer}"
    dictionary, sae, annotation = (
        os.path.join(args.out, f"{n}.safetensors") for n in ("dictionary", "sae", "annotation")
    )
    model = ["--model", args.model, "--dtype", args.dtype]
    source = ["--concepts", args.concepts] if args.concepts else ["--scores", args.scores, "--labels", args.labels]
    sgm_jax("dictionary", *model, "--stimuli", args.stimuli, *source, "--site", site, "--out", dictionary)
    data = [a for path in args.train for a in ("--data", path)]
    sgm_jax(
        "sae",
        "train",
        *model,
        *data,
        "--dictionary",
        dictionary,
        "--atoms",
        str(args.atoms),
        "--k",
        str(args.k),
        "--steps",
        str(args.steps),
        "--batch-size",
        str(args.batch_size),
        "--out",
        sae,
    )
    sgm_jax("sae", "annotate", "--sae", sae, "--dictionary", dictionary, "--eta", str(args.eta), "--out", annotation)
    print("\nnext, beside SGM (tune --daco-eta and --daco-gamma on a validation split first):")
    print(
        f"  sgm-jax compare --model {shlex.quote(args.model)} --data EVAL.jsonl --intervention sgm.safetensors "
        f"--sae {shlex.quote(sae)} --annotation {shlex.quote(annotation)} --daco-gamma 0.5 --dictionary "
        f"{shlex.quote(dictionary)} --config none --config sgm --config mop --config daco --config sgm+daco "
        "--out COMPARE"
    )


if __name__ == "__main__":
    main()
