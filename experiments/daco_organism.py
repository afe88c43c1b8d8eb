"""DACO and MOP on the model organism, beside SGM and SGM+DACO, in one comparison table.

1. The SGM intervention as the demo builds it (pooled MLP responses on the train split, AUROC, AurA).
2. Concept steering at the organism's middle layer: the concept dictionary read from generated stimuli (the
   generator's own attributes), per-token activations of the train split and the stimuli, a TopK SAE whose
   decoder starts from the dictionary, trained with optax (its fraction of variance explained is reported).
3. `eta` and `gamma` (DACO) and `lam` and `gamma` (MOP) tuned on a validation split drawn with another seed:
   the lowest harmful rate whose multiple-choice accuracy stays within `--mcq-tolerance` of the unsteered
   model's (ties to the gentler setting).
4. `compare` on the test split: none, sgm, mop, daco, sgm+mop, sgm+daco, with harmful rate (95% interval),
   over-refusal, multiple-choice accuracy, perplexity and tokens/s.

Every step resumes: rerun the same command after an interruption.

    python experiments/daco_organism.py --out DIR
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time

from sgm_jax.atomic import write_json
from sgm_jax.collect import collect_to_store
from sgm_jax.data.readers.native import read_jsonl
from sgm_jax.data.synthetic import Composition, write_dataset
from sgm_jax.defenses.daco import DACO, MOP
from sgm_jax.demo import ORGANISM_DIR, comparison_items, organism_card
from sgm_jax.evaluate.compare import Configuration, compare, comparison_table
from sgm_jax.evaluate.judges import LexiconJudge
from sgm_jax.evaluate.runner import EvalOptions, measure
from sgm_jax.interventions import aura
from sgm_jax.loading import load_model
from sgm_jax.scores import score_store, store_metadata
from sgm_jax.sites import default_sites
from sgm_jax.steering.annotate import annotate
from sgm_jax.steering.organism import OrganismSteering, organism_steering
from sgm_jax.steering.sparse_coding import SparseCodingSettings

VALIDATION = Composition(
    train_shape_scenes=1,
    train_word_scenes=1,
    test_shape_scenes=40,
    test_word_scenes=30,
    mcq_train=1,
    mcq_test=60,
    neutral_train=1,
    neutral_test=1,
)
DACO_GRID = [(eta, gamma) for eta in (0.5, 0.6, 0.7) for gamma in (0.0, 0.5, 1.0)]
MOP_GRID = [(lam, gamma) for lam in (0.01, 0.002) for gamma in (0.0, 0.1, 0.25)]


def tune(model, processor, candidates, validation, judge, out_dir, options, tolerance):
    """Measure each candidate defense on the validation split; the safest one within the MCQ tolerance."""
    rows, memo = [], {}
    reference = measure("none", model, model, processor, validation, judge, (), out_dir, options, memo=memo)
    floor = reference["mcq_accuracy"] - tolerance
    for name, defense, knobs in candidates:
        metrics = measure(name, model, model, processor, validation, judge, (), out_dir, options, (defense,), memo)
        rows.append(
            {
                "name": name,
                **knobs,
                "harmful_rate": metrics["harmful_rate"]["all"]["rate"],
                "over_refusal": metrics["over_refusal"]["rate"],
                "mcq_accuracy": metrics["mcq_accuracy"],
            }
        )
        print(f"  {name}: harmful {rows[-1]['harmful_rate']:.1%}, MCQ {rows[-1]['mcq_accuracy']:.1%}")
    allowed = [i for i, r in enumerate(rows) if r["mcq_accuracy"] >= floor] or list(range(len(rows)))
    best = min(allowed, key=lambda i: (rows[i]["harmful_rate"] + rows[i]["over_refusal"], i))
    return best, {
        "reference": {
            "harmful_rate": reference["harmful_rate"]["all"]["rate"],
            "mcq_accuracy": reference["mcq_accuracy"],
        },
        "candidates": rows,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="output folder (a rerun resumes in it)")
    parser.add_argument("--steps", type=int, default=1500, help="SAE training steps (default 1500)")
    parser.add_argument("--atoms", type=int, default=256, help="SAE atoms, the dictionary's concepts first (256)")
    parser.add_argument(
        "--mcq-tolerance",
        type=float,
        default=0.05,
        help="largest validation MCQ accuracy drop a tuned setting may cost (default 0.05)",
    )
    parser.add_argument("--max-new-tokens", type=int, default=24, help="answer length (default 24)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args()
    out, progress = args.out, not args.quiet
    started = time.perf_counter()

    card = organism_card()
    data = card["dataset"]
    paths = write_dataset(os.path.join(out, "data"), seed=data["seed"], composition=Composition(**data["composition"]))
    held = write_dataset(os.path.join(out, "validation_data"), seed=data["seed"] + 101, composition=VALIDATION)
    from importlib.resources import as_file

    with as_file(ORGANISM_DIR) as organism:
        model, processor = load_model(str(organism))
    train = read_jsonl(paths["train.jsonl"])
    store = collect_to_store(
        model,
        processor,
        train,
        os.path.join(out, "store"),
        sites=default_sites(model),
        batch_size=32,
        progress=progress,
    )
    intervention = aura(score_store(store, progress=progress), threshold=0.5, source=store_metadata(store))

    print("concept dictionary and SAE ...")
    dictionary, sae = organism_steering(
        model,
        processor,
        train,
        os.path.join(out, "steering"),
        dataclasses.replace(
            OrganismSteering(), atoms=args.atoms, train=dataclasses.replace(OrganismSteering().train, steps=args.steps)
        ),
        progress=progress,
    )
    print(
        f"  SAE: fraction of variance explained {sae.metadata['fraction_of_variance_explained']:.4f}, "
        f"dead atoms {sae.metadata['dead_atoms']} of {sae.config.atoms}"
    )

    judge = LexiconJudge(paths["lexicon.txt"])
    options = EvalOptions(max_new_tokens=args.max_new_tokens, batch_size=32, progress=False)
    validation = read_jsonl(held["test.jsonl"]) + read_jsonl(held["mcq_test.jsonl"])
    validation = [s for s in validation if s.options or s.label == 1] + [
        s for s in validation if not s.options and s.label == 0
    ][::2]
    tuning_dir = os.path.join(out, "tuning")
    os.makedirs(tuning_dir, exist_ok=True)
    print("tuning DACO (eta, gamma) on the validation split ...")
    daco_candidates = [
        (
            f"daco-eta{eta}-gamma{gamma}",
            DACO(sae, annotate(sae, dictionary, eta), gamma=gamma),
            {"eta": eta, "gamma": gamma},
        )
        for eta, gamma in DACO_GRID
    ]
    best_daco, daco_tuning = tune(
        model, processor, daco_candidates, validation, judge, tuning_dir, options, args.mcq_tolerance
    )
    print("tuning MOP (lam, gamma) on the validation split ...")
    mop_candidates = [
        (
            f"mop-lam{lam}-gamma{gamma}",
            MOP(dictionary, SparseCodingSettings(lam=lam, gamma=gamma)),
            {"lam": lam, "gamma": gamma},
        )
        for lam, gamma in MOP_GRID
    ]
    best_mop, mop_tuning = tune(
        model, processor, mop_candidates, validation, judge, tuning_dir, options, args.mcq_tolerance
    )
    daco, mop = daco_candidates[best_daco][1], mop_candidates[best_mop][1]

    test = read_jsonl(paths["test.jsonl"]) + read_jsonl(paths["mcq_test.jsonl"])
    with open(paths["neutral.txt"], encoding="utf-8") as f:
        neutral = [line.strip() for line in f if line.strip()]
    configurations = [
        Configuration("none"),
        Configuration("sgm", True),
        Configuration("mop", False, (mop,)),
        Configuration("daco", False, (daco,)),
        Configuration("sgm+mop", True, (mop,)),
        Configuration("sgm+daco", True, (daco,)),
    ]
    comparison = compare(
        model,
        processor,
        comparison_items(test),
        judge=judge,
        out_dir=out,
        configurations=configurations,
        intervention=intervention,
        neutral_texts=neutral,
        options=options,
        info={"model": "model organism", "steering_site": dictionary.site},
    )
    results = {
        "comparison": comparison["comparison"],
        "configurations": comparison["configurations"],
        "dictionary": {
            "site": dictionary.site,
            "concepts": len(dictionary.concepts),
            "undesirable": [c for c, u in zip(dictionary.concepts, dictionary.undesirable) if u],
            "desirable": [c for c, p in zip(dictionary.concepts, dictionary.desirable) if p],
        },
        "sae": {k: v for k, v in sae.metadata.items() if k != "history"} | {"config": dataclasses.asdict(sae.config)},
        "tuning": {
            "daco": daco_tuning | {"chosen": daco_candidates[best_daco][2]},
            "mop": mop_tuning | {"chosen": mop_candidates[best_mop][2]},
        },
        "seconds": time.perf_counter() - started,
    }
    write_json(os.path.join(out, "results.json"), results)
    print(comparison_table(comparison["comparison"]))
    print(
        json.dumps(
            {
                "sae_fve": sae.metadata["fraction_of_variance_explained"],
                "daco": results["tuning"]["daco"]["chosen"],
                "mop": results["tuning"]["mop"]["chosen"],
                "seconds": round(results["seconds"]),
            }
        )
    )


if __name__ == "__main__":
    main()
