"""Which modality an expert neuron reads: its AUROC with the image taken away, and with the text taken away.

SGM's experts are "cross-modal" by claim; this measures it. For every neuron of the sites (SGM's by default),
the AUROC of its mean-pooled response as a classifier of the label, in five views of the same labelled samples:

  all        every token (SGM's own score, AUROC_all)
  image      the image tokens only            } descriptive: where in the sequence
  text       the text tokens only             } the neuron's expertise shows
  no_image   every token, each image replaced by one without content (a uniform mid-grey image of the same
             size, or seeded Gaussian noise around mid-grey): the text and the label are kept
  no_text    every token, the prompt replaced by a neutral one ("Describe the image.") and a teacher-forced
             response dropped (it is text too): the image and the label are kept

Labels stay the original ones: the question is whether the neuron still tells the classes apart once a
modality is gone. An expert is a neuron with AUROC_all >= `threshold` (0.6 by default: a margin above
chance, so the shares below are not ratios of noise; a neuron below 0.5 sides with the benign class and is left
out). The share of its expertise that survives each ablation is

  r_img = (AUROC_no_image - 0.5) / (AUROC_all - 0.5)      r_txt = (AUROC_no_text - 0.5) / (AUROC_all - 0.5)

and with a cut `tau` (0.5 by default) it is

  visual       r_img <  tau and r_txt >= tau   loses its expertise without the image, keeps it without the text
  textual      r_img >= tau and r_txt <  tau   the reverse
  cross-modal  r_img <  tau and r_txt <  tau   needs both
  either       r_img >= tau and r_txt >= tau   either modality alone carries it

Each view is one forward pass per sample, five in all; only the all-token responses are kept (for the top
experts' contexts: the samples that activate them most).
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from sgm_jax.data.encode import encode
from sgm_jax.data.images import load_rgb
from sgm_jax.data.samples import Sample, dataset_hash
from sgm_jax.decoding.batching import collate, pad_token_id, plan_batches
from sgm_jax.decoding.lengths import check_lengths, estimated_lengths
from sgm_jax.experts.auroc import NonFiniteError, auroc
from sgm_jax.models.fingerprint import model_fingerprint
from sgm_jax.responses.capture import CaptureSpec, pooled_batch
from sgm_jax.responses.sites import default_sites, resolve
from sgm_jax.runtime import distributed
from sgm_jax.runtime.artifact_files import load_artifact, save_artifact
from sgm_jax.runtime.artifacts import EXPERTS
from sgm_jax.runtime.atomic import atomic_write, write_json
from sgm_jax.runtime.choices import IMAGE_ABLATIONS, NEUTRAL_PROMPT
from sgm_jax.runtime.errors import CheckpointError, InputError, OptionError

CLASSES = ("visual", "textual", "cross-modal", "either")
VISUAL, TEXTUAL, CROSS_MODAL, EITHER = range(len(CLASSES))  # class codes; NOT_EXPERT for the other neurons
NOT_EXPERT = -1
VIEWS = ("all", "image", "text", "no_image", "no_text")
_GREY, _NOISE_SIGMA = 128, 64.0  # the content-free image: mid-grey, or noise around it (8-bit pixel values)
_SHOWN = 5


@dataclasses.dataclass(frozen=True)
class SiteAttribution:
    """One site's neurons: their AUROC in each view, and each expert's class (an index into CLASSES,
    NOT_EXPERT for the others)."""

    auroc_all: np.ndarray
    auroc_image: np.ndarray
    auroc_text: np.ndarray
    auroc_no_image: np.ndarray
    auroc_no_text: np.ndarray
    classes: np.ndarray

    def auroc(self, view: str) -> np.ndarray:
        return getattr(self, f"auroc_{view}")


@dataclasses.dataclass(frozen=True)
class Attribution:
    """Every site's `SiteAttribution`, the top experts with the samples that activate them most, and how it was
    made (`metadata`: model, data, threshold, tau, ablations, the decoder's site prefix)."""

    sites: dict[str, SiteAttribution]
    top: list[dict[str, Any]]
    metadata: dict[str, Any]

    def group(self, site: str) -> str:
        """The decoder layer a site belongs to ("3"), or the site itself when it is not in a decoder layer."""
        match = re.match(re.escape(self.metadata["decoder_layers"]) + r"\.(\d+)(?:[.:]|$)", site)
        return match.group(1) if match else site

    def counts(self) -> dict[str, dict[str, int]]:
        """`{layer or site: {class: experts}}`, decoder layers in numeric order first."""
        groups: dict[str, np.ndarray] = {}
        for site, s in self.sites.items():
            key = self.group(site)
            groups[key] = np.concatenate([groups.get(key, np.zeros(0, np.int8)), s.classes])
        order = sorted(groups, key=lambda k: (not k.isdigit(), int(k) if k.isdigit() else 0))
        return {k: {c: int((groups[k] == i).sum()) for i, c in enumerate(CLASSES)} for k in order}

    def totals(self) -> dict[str, int]:
        return {c: sum(n[c] for n in self.counts().values()) for c in CLASSES}

    def save(self, path: str) -> None:
        tensors = {
            f"{view}/{site}": s.auroc(view).astype(np.float32) for site, s in self.sites.items() for view in VIEWS
        }
        tensors |= {f"class/{site}": s.classes.astype(np.int8) for site, s in self.sites.items()}
        save_artifact(path, EXPERTS, tensors, {**self.metadata, "site_order": list(self.sites), "top": self.top})


def load_attribution(path: str) -> Attribution:
    """An attribution written by `Attribution.save`."""
    tensors, metadata = load_artifact(path, EXPERTS)
    order, top = metadata.pop("site_order"), metadata.pop("top")
    sites = {
        site: SiteAttribution(
            **{f"auroc_{view}": tensors[f"{view}/{site}"] for view in VIEWS}, classes=tensors[f"class/{site}"]
        )
        for site in order
    }
    return Attribution(sites, top, metadata)


def classify(
    auroc_all: np.ndarray, auroc_no_image: np.ndarray, auroc_no_text: np.ndarray, *, threshold: float, tau: float
) -> np.ndarray:
    """Class codes (int8) by the rule in this module's docstring; NOT_EXPERT below `threshold`."""
    expert = auroc_all >= threshold
    gain = np.where(expert, auroc_all - 0.5, 1.0)
    keeps_image = (auroc_no_image - 0.5) / gain >= tau
    keeps_text = (auroc_no_text - 0.5) / gain >= tau
    codes = np.where(keeps_image, np.where(keeps_text, EITHER, TEXTUAL), np.where(keeps_text, VISUAL, CROSS_MODAL))
    return np.where(expert, codes, NOT_EXPERT).astype(np.int8)


def check_samples(samples: Sequence[Sample]) -> None:
    """Refuse, before a model loads, samples that cannot be attributed: unlabelled, one class, no image."""
    if not samples:
        raise InputError("no samples to attribute experts on")
    unlabelled = [s.id for s in samples if s.label is None]
    if unlabelled:
        raise InputError(
            f"{len(unlabelled)} samples have no label (first: {unlabelled[:_SHOWN]}); AUROC needs label 0/1 on each"
        )
    classes = {s.label for s in samples}
    if len(classes) < 2:
        raise InputError(
            f"AUROC is undefined: all {len(samples)} samples have label {classes.pop()}; experts need both toxic "
            "(1) and benign (0) samples"
        )
    imageless = [s.id for s in samples if s.image is None]
    if imageless:
        raise InputError(
            f"{len(imageless)} samples have no image (first: {imageless[:_SHOWN]}); attribution takes the image "
            "away from each sample, so each needs one"
        )


def ablated_image(sample: Sample, how: str, *, seed: int, index: int) -> Image.Image:
    """A picture of the sample's image size with none of its content: uniform mid-grey (`blank`), or Gaussian
    noise around it (`noise`, seeded by `seed` and the sample's index)."""
    width, height = load_rgb(sample.image).size
    if how == "blank":
        return Image.new("RGB", (width, height), (_GREY,) * 3)
    noise = np.random.default_rng([seed, index]).normal(_GREY, _NOISE_SIGMA, (height, width, 3))
    return Image.fromarray(np.clip(np.rint(noise), 0, 255).astype(np.uint8))


def attribute(
    model,
    processor,
    samples: Sequence[Sample],
    *,
    sites=None,
    threshold: float = 0.6,
    tau: float = 0.5,
    image_ablation: str = "blank",
    text_ablation: str = NEUTRAL_PROMPT,
    top: int = 10,
    contexts: int = 5,
    batch_size: int = 8,
    seed: int = 0,
    model_name: str = "",
    dataset_name: str = "",
    progress: bool = True,
) -> Attribution:
    """Each neuron's AUROC in the five views, each expert's class, and the `top` experts by AUROC_all with the
    `contexts` samples that activate them most (see the module docstring)."""
    if processor is None:
        raise CheckpointError("the checkpoint has no tokenizer/processor files, so samples cannot be encoded")
    if not 0.5 < threshold <= 1:
        raise OptionError(f"threshold must be in (0.5, 1] (an expert separates better than chance), got {threshold}")
    if image_ablation not in IMAGE_ABLATIONS:
        raise OptionError(f"image_ablation={image_ablation!r} is not one of {list(IMAGE_ABLATIONS)}")
    if not text_ablation.strip():
        raise OptionError("the neutral prompt of the text ablation is empty")
    if batch_size < 1 or top < 0 or contexts < 1:
        raise OptionError(f"batch_size and contexts must be >= 1 and top >= 0, got {batch_size}, {contexts}, {top}")
    check_samples(samples)
    refs = tuple(resolve(model, sites or default_sites(model)))
    labels = np.asarray([s.label for s in samples], np.int32)
    silenced = [dataclasses.replace(s, prompt=text_ablation, response=None) for s in samples]
    lengths = estimated_lengths(samples, processor, model.tokens_per_image)
    silenced_lengths = estimated_lengths(silenced, processor, model.tokens_per_image)
    check_lengths(model, samples, lengths)
    check_lengths(model, silenced, silenced_lengths)

    def content_free(i: int) -> Image.Image:
        return ablated_image(samples[i], image_ablation, seed=seed, index=i)

    views = {  # view: (samples, their lengths, tokens pooled, the image each sample is shown instead of its own)
        "all": (samples, lengths, "all", None),
        "image": (samples, lengths, "image", None),
        "text": (samples, lengths, "text", None),
        "no_image": (samples, lengths, "all", content_free),
        "no_text": (silenced, silenced_lengths, "all", None),
    }
    scores, responses = {}, {}
    for view, (shown, view_lengths, tokens, image) in views.items():
        spec = CaptureSpec(refs, "mean", tokens)
        pooled = _pooled(
            model, processor, shown, view_lengths, spec, image, batch_size=batch_size, desc=view, progress=progress
        )
        scores[view] = _aurocs(pooled, labels, view)
        if view == "all":
            responses = pooled  # kept for the top experts' contexts
    attributed = {
        ref.name: SiteAttribution(
            **{f"auroc_{view}": scores[view][ref.name] for view in VIEWS},
            classes=classify(
                scores["all"][ref.name],
                scores["no_image"][ref.name],
                scores["no_text"][ref.name],
                threshold=threshold,
                tau=tau,
            ),
        )
        for ref in refs
    }
    metadata = {
        "model": model_name,
        "model_fingerprint": model_fingerprint(model),
        "dataset": dataset_name,
        "dataset_hash": dataset_hash(samples),
        "n_positive": int(labels.sum()),
        "n_negative": int(len(labels) - labels.sum()),
        "pooling": "mean",
        "threshold": float(threshold),
        "tau": float(tau),
        "image_ablation": image_ablation,
        "text_ablation": text_ablation,
        "seed": int(seed),
        "decoder_layers": model.decoder_layers,
        "sites": {ref.name: ref.width for ref in refs},
    }
    result = Attribution(attributed, [], metadata)
    return dataclasses.replace(result, top=_top_experts(result, responses, samples, top, contexts))


def _pooled(
    model,
    processor,
    samples: Sequence[Sample],
    lengths: Sequence[int],
    spec: CaptureSpec,
    image: Callable[[int], Image.Image] | None,
    *,
    batch_size: int,
    desc: str,
    progress: bool,
) -> dict[str, np.ndarray]:
    """`{site: [samples, width]}` pooled responses, rows in sample order; `image(i)` replaces sample i's image. In
    a job over several processes the batches are shared out and every process gets every row."""
    out = {ref.name: np.zeros((len(samples), ref.width), np.float32) for ref in spec.refs}
    pad_id = pad_token_id(processor)
    plan = plan_batches(lengths, batch_size)

    def pooled(rows: list[int]) -> dict[str, np.ndarray]:
        batch = [encode(samples[i], processor, None if image is None else image(i)) for i in rows]
        check_lengths(model, [samples[i] for i in rows], [len(e["input_ids"]) for e in batch])
        pooled = pooled_batch(model, collate(batch, pad_id, len(plan[0])), spec)  # the last batch filled
        return {name: values[: len(rows)] for name, values in pooled.items()}

    bar = tqdm(total=len(plan), desc=desc, unit="batch", disable=not progress)
    for results in distributed.rounds(plan, pooled, distributed.encode_arrays, distributed.decode_arrays):
        for position, values in results:
            for name, value in values.items():
                out[name][plan[position]] = value
            bar.update()
    bar.close()
    return out


def _aurocs(responses: dict[str, np.ndarray], labels: np.ndarray, view: str) -> dict[str, np.ndarray]:
    out = {}
    for site, values in responses.items():
        try:
            out[site] = auroc(values, labels)
        except NonFiniteError as err:
            raise NonFiniteError(f"site {site!r}, view {view!r}: {err} (rows are samples in data order)") from None
    return out


def _top_experts(
    attribution: Attribution, responses: dict[str, np.ndarray], samples: Sequence[Sample], top: int, contexts: int
) -> list[dict[str, Any]]:
    """The `top` experts by AUROC_all (ties in site and neuron order), each with its `contexts` most activating
    samples."""
    candidates = []
    for position, (site, s) in enumerate(attribution.sites.items()):
        experts = np.flatnonzero(s.classes != NOT_EXPERT)
        best = experts[np.argsort(-s.auroc_all[experts], kind="stable")[:top]]
        candidates += [(-float(s.auroc_all[i]), position, int(i), site) for i in best]
    chosen = []
    for _, _, neuron, site in sorted(candidates)[:top]:
        s, column = attribution.sites[site], responses[site][:, neuron]
        chosen.append(
            {
                "site": site,
                "neuron": neuron,
                "layer": attribution.group(site),
                "class": CLASSES[s.classes[neuron]],
                **{f"auroc_{view}": round(float(s.auroc(view)[neuron]), 4) for view in VIEWS},
                "contexts": [
                    _context(samples[i], float(column[i])) for i in np.argsort(-column, kind="stable")[:contexts]
                ],
            }
        )
    return chosen


def _context(sample: Sample, activation: float) -> dict[str, Any]:
    context = {"id": sample.id, "label": sample.label, "activation": round(activation, 5), "prompt": sample.prompt}
    if sample.response is not None:
        context["response"] = sample.response
    context["image"] = sample.image
    return context


def _cell(text: Any) -> str:
    """Text fit for one Markdown table cell."""
    return " ".join(str(text).split()).replace("|", "\\|")


def report(attribution: Attribution, out_dir: str) -> str:
    """experts.md: how the experts were found and classified, their count per layer, the top experts' contexts."""
    m, counts, totals = attribution.metadata, attribution.counts(), attribution.totals()
    neurons = {k: 0 for k in counts}
    for site, width in m["sites"].items():
        neurons[attribution.group(site)] += width
    lines = [
        "# Which modality the expert neurons read",
        "",
        f"- model: {m['model'] or '(in memory)'}",
        f"- data: {m['dataset'] or '(in memory)'} ({m['n_positive']} toxic, {m['n_negative']} benign samples)",
        f"- sites: {len(m['sites'])} ({sum(m['sites'].values())} neurons), responses mean-pooled",
        f"- experts: AUROC over all tokens >= {m['threshold']:g}; cut tau = {m['tau']:g}",
        f"- without the image: each image replaced by {_IMAGE_WORDS[m['image_ablation']]} of its size",
        f"- without the text: the prompt replaced by {m['text_ablation']!r}, teacher-forced responses dropped",
        "",
        "Labels stay the original ones. r_img = (AUROC without the image - 0.5) / (AUROC - 0.5), r_txt likewise: "
        f"an expert is **visual** if r_img < {m['tau']:g} <= r_txt (it needs the image), **textual** if "
        f"r_txt < {m['tau']:g} <= r_img, **cross-modal** if both are below (it needs both), **either** if both "
        "are at or above (either modality alone carries it).",
        "",
        "## Experts per layer",
        "",
        "| layer | " + " | ".join(CLASSES) + " | experts | neurons |",
        "|---|" + "---:|" * (len(CLASSES) + 2),
    ]
    for group, n in counts.items():
        name = f"layer {group}" if group.isdigit() else f"`{group}`"
        lines.append(
            f"| {name} | " + " | ".join(str(n[c]) for c in CLASSES) + f" | {sum(n.values())} | {neurons[group]} |"
        )
    lines += [
        "| **all** | " + " | ".join(f"**{totals[c]}**" for c in CLASSES) + f" | **{sum(totals.values())}** | "
        f"**{sum(neurons.values())}** |",
        "",
        "![experts per layer](experts.png)",
        "",
    ]
    if attribution.top:
        lines += [f"## Top {len(attribution.top)} experts and the samples that activate them most", ""]
    for rank, e in enumerate(attribution.top, 1):
        lines += [
            f"### {rank}. `{e['site']}` neuron {e['neuron']}: {e['class']}",
            "",
            f"AUROC {e['auroc_all']:.3f} (image tokens {e['auroc_image']:.3f}, text tokens {e['auroc_text']:.3f}); "
            f"without the image {e['auroc_no_image']:.3f}, without the text {e['auroc_no_text']:.3f}",
            "",
            "| sample | label | activation | prompt | response | image |",
            "|---|---:|---:|---|---|---|",
        ]
        for c in e["contexts"]:
            image = os.path.relpath(c["image"], out_dir) if c["image"] else ""
            lines.append(
                f"| `{_cell(c['id'])}` | {c['label']} | {c['activation']:.4g} | {_cell(c['prompt'])} | "
                f"{_cell(c.get('response', ''))} | {_cell(image)} |"
            )
        lines.append("")
    return "\n".join(lines)


_IMAGE_WORDS = {"blank": "a uniform mid-grey image", "noise": "seeded Gaussian noise around mid-grey"}


def plot(attribution: Attribution, path: str) -> None:
    """Experts per layer, stacked by class."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = attribution.counts()
    fig, ax = plt.subplots(figsize=(max(7.0, 0.5 * len(counts) + 3), 4), dpi=100)
    bottom = np.zeros(len(counts))
    for name in CLASSES:
        values = np.array([n[name] for n in counts.values()])
        ax.bar(list(counts), values, bottom=bottom, label=name)
        bottom += values
    if not all(k.isdigit() for k in counts):
        ax.tick_params(axis="x", labelrotation=30)
    ax.set_xlabel("decoder layer (or site)")
    ax.set_ylabel(f"experts (AUROC >= {attribution.metadata['threshold']:g})")
    ax.set_title("Which modality the experts of each layer read")
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)


def write_outputs(attribution: Attribution, out_dir: str) -> dict[str, str]:
    """experts.safetensors (the attribution), experts.json (counts, top experts), experts.md and experts.png."""
    os.makedirs(out_dir, exist_ok=True)
    paths = {name: os.path.join(out_dir, f"experts.{name}") for name in ("safetensors", "json", "md", "png")}
    attribution.save(paths["safetensors"])
    summary = {
        "metadata": attribution.metadata,
        "totals": attribution.totals(),
        "counts": attribution.counts(),
        "top": attribution.top,
    }
    write_json(paths["json"], summary)
    text = report(attribution, out_dir) + "\n"

    def write(tmp):
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)

    atomic_write(paths["md"], write)
    plot(attribution, paths["png"])
    return paths
