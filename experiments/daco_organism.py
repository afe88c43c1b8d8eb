"""DACO and MOP on the model organism, beside SGM and SGM+DACO, in one comparison table.

1. The SGM intervention as the demo builds it (pooled MLP responses on the train split, AUROC, AurA).
2. Concept steering at each candidate layer's output (`--layers`, default the organism's 2nd, 3rd and 4th
   blocks): the concept dictionary read from generated stimuli (the generator's own attributes), per-token
   activations of the train split and the stimuli, a TopK SAE whose decoder starts from the dictionary, trained
   with optax (its fraction of variance explained is reported).
3. The layer, `eta` and `gamma` (DACO) and the layer, `lam` and `gamma` (MOP) tuned on a validation split drawn
   with another seed: the lowest harmful rate whose multiple-choice accuracy stays within `--mcq-tolerance` of
   the unsteered model's (ties to the gentler setting, earlier in the grid).
4. For SGM+MOP and SGM+DACO, the dictionary and SAE read again from the SGM-gated model (the model they steer),
   at the tuned layer with the tuned knobs.
5. `compare` on the test split: none, sgm, mop, daco, sgm+mop, sgm+daco, with harmful rate (95% interval),
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

from sgm_jax.data.readers.native import read_jsonl
from sgm_jax.data.synthetic import Composition, write_dataset
from sgm_jax.defenses.daco import DACO, MOP
from sgm_jax.evaluate.compare import Configuration, compare, comparison_table
from sgm_jax.evaluate.runner import EvalContext, EvalOptions, measure
from sgm_jax.experts.scores import score_store, store_metadata
from sgm_jax.interventions import aura, intervene
from sgm_jax.judges import LexiconJudge
from sgm_jax.organism.demo import comparison_items
from sgm_jax.organism.files import load_organism, organism_card, write_organism_data
from sgm_jax.responses.collect import collect_to_store
from sgm_jax.responses.sites import default_sites
from sgm_jax.runtime.atomic import write_json
from sgm_jax.steering.annotate import annotate
from sgm_jax.steering.organism import OrganismSteering, organism_steering
from sgm_jax.steering.sparse_coding import SparseCodingSettings

VALIDATION = Composition(
    train_shape_scenes=1,
    train_word_scenes=1,
    test_shape_scenes=80,
    test_word_scenes=60,
    mcq_train=1,
    mcq_test=100,
    neutral_train=1,
    neutral_test=1,
)
DACO_GRID = [(eta, gamma) for eta in (0.5, 0.6, 0.7) for gamma in (0.0, 0.5)]
MOP_GRID = [(lam, gamma) for lam in (0.05, 0.01, 0.002) for gamma in (0.0, 0.25)]


def tune(model, processor, candidates, validation, judge, out_dir, options, tolerance):
    """Measure each candidate defense on the validation split; the safest one within the MCQ tolerance."""
    rows, context = [], EvalContext(model, processor, validation, judge, (), out_dir, options)
    reference = measure(context, "none", model)
    floor = reference["mcq_accuracy"] - tolerance
    for name, defense, knobs in candidates:
        metrics = measure(context, name, model, (defense,))
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
        "--layers",
        type=int,
        nargs="+",
        default=[1, 2, 3],
        help="decoder layers whose output is a candidate steering site (default 1 2 3)",
    )
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
    paths = write_organism_data(os.path.join(out, "data"))
    held = write_dataset(os.path.join(out, "validation_data"), seed=data["seed"] + 101, composition=VALIDATION)
    model, processor = load_organism()
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

    def steering_at(layer, reader, folder):
        """The concept dictionary and SAE at `layer`'s output, read from `reader` (the model they will steer)."""
        site = f"model.language_model.layers.{layer}"
        print(f"concept dictionary and SAE at {site} ({folder}) ...")
        settings = OrganismSteering(
            site=site, atoms=args.atoms, train=dataclasses.replace(OrganismSteering().train, steps=args.steps)
        )
        built = organism_steering(
            reader, processor, train, os.path.join(out, "steering", folder), settings, progress=progress
        )
        sae = built[1]
        print(
            f"  SAE: fraction of variance explained {sae.metadata['fraction_of_variance_explained']:.4f}, "
            f"dead atoms {sae.metadata['dead_atoms']} of {sae.config.atoms}"
        )
        return built

    steering = {layer: steering_at(layer, model, f"layer{layer}") for layer in args.layers}

    judge = LexiconJudge(paths["lexicon.txt"])
    options = EvalOptions(max_new_tokens=args.max_new_tokens, batch_size=32, progress=False)
    validation = read_jsonl(held["test.jsonl"]) + read_jsonl(held["mcq_test.jsonl"])
    validation = [s for s in validation if s.options or s.label == 1] + [
        s for s in validation if not s.options and s.label == 0
    ][::2]
    tuning_dir = os.path.join(out, "tuning")
    os.makedirs(tuning_dir, exist_ok=True)
    print("tuning DACO (layer, eta, gamma) on the validation split ...")
    daco_candidates = [
        (
            f"daco-layer{layer}-eta{eta}-gamma{gamma}",
            DACO(sae, annotate(sae, dictionary, eta), gamma=gamma),
            {"layer": layer, "eta": eta, "gamma": gamma},
        )
        for layer, (dictionary, sae) in steering.items()
        for eta, gamma in DACO_GRID
    ]
    best_daco, daco_tuning = tune(
        model, processor, daco_candidates, validation, judge, tuning_dir, options, args.mcq_tolerance
    )
    print("tuning MOP (layer, lam, gamma) on the validation split ...")
    mop_candidates = [
        (
            f"mop-layer{layer}-lam{lam}-gamma{gamma}",
            MOP(dictionary, SparseCodingSettings(lam=lam, gamma=gamma)),
            {"layer": layer, "lam": lam, "gamma": gamma},
        )
        for layer, (dictionary, _) in steering.items()
        for lam, gamma in MOP_GRID
    ]
    best_mop, mop_tuning = tune(
        model, processor, mop_candidates, validation, judge, tuning_dir, options, args.mcq_tolerance
    )
    daco, mop = daco_candidates[best_daco][1], mop_candidates[best_mop][1]
    chosen_daco, chosen_mop = daco_candidates[best_daco][2], mop_candidates[best_mop][2]
    dictionary, sae = steering[chosen_daco["layer"]]
    # SGM+DACO and SGM+MOP steer the gated model, so their dictionary and SAE are read from it (with the tuned
    # layer and knobs): activations under SGM's gates are not the plain model's, and an SAE trained on the plain
    # model's mangles them (measured: answers like "the we a a a a ..." on the validation split).
    gated = intervene(model, intervention)
    gated_steering = {
        layer: steering_at(layer, gated, f"sgm-layer{layer}") for layer in {chosen_daco["layer"], chosen_mop["layer"]}
    }
    gated_dictionary, gated_sae = gated_steering[chosen_daco["layer"]]
    gated_daco = DACO(gated_sae, annotate(gated_sae, gated_dictionary, chosen_daco["eta"]), gamma=chosen_daco["gamma"])
    gated_mop = MOP(
        gated_steering[chosen_mop["layer"]][0],
        SparseCodingSettings(lam=chosen_mop["lam"], gamma=chosen_mop["gamma"]),
    )

    test = read_jsonl(paths["test.jsonl"]) + read_jsonl(paths["mcq_test.jsonl"])
    with open(paths["neutral.txt"], encoding="utf-8") as f:
        neutral = [line.strip() for line in f if line.strip()]
    configurations = [
        Configuration("none"),
        Configuration("sgm", True),
        Configuration("mop", False, (mop,)),
        Configuration("daco", False, (daco,)),
        Configuration("sgm+mop", True, (gated_mop,)),
        Configuration("sgm+daco", True, (gated_daco,)),
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
        info={"model": "model organism", "daco_site": daco.site, "mop_site": mop.site},
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
        "sgm_sae": {
            "fraction_of_variance_explained": gated_sae.metadata["fraction_of_variance_explained"],
            "dead_atoms": gated_sae.metadata["dead_atoms"],
        },
        "sae_by_layer": {
            layer: {
                "fraction_of_variance_explained": s.metadata["fraction_of_variance_explained"],
                "dead_atoms": s.metadata["dead_atoms"],
            }
            for layer, (_, s) in steering.items()
        },
        "tuning": {
            "daco": daco_tuning | {"chosen": chosen_daco},
            "mop": mop_tuning | {"chosen": chosen_mop},
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
