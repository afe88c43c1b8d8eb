"""Pooled activations at one site over samples' prompts: what a prober and a concept dictionary read."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from sgm_jax.data.encode import encode
from sgm_jax.data.samples import Sample
from sgm_jax.decoding.batching import collate, pad_token_id, plan_batches
from sgm_jax.models.batch import model_batch
from sgm_jax.responses.capture import CaptureSpec, pooled_batch
from sgm_jax.responses.sites import SiteError, nearest, resolve, site_refs


def prompt_features(
    model,
    processor,
    samples: Sequence[Sample],
    site: str,
    pooling: str,
    *,
    tokens: str = "all",
    batch_size: int = 16,
    reader: str = "prober",
) -> np.ndarray:
    """`[n, width]` pooled activations at `site` over each sample's prompt (its response dropped), rendered with
    the generation prompt; `reader` names who reads them in an error."""
    refs = site_refs(model)
    if site not in refs:
        raise SiteError(f"{reader} site {site!r} is not a site of this model; nearest: {nearest(site, refs)}")
    spec = CaptureSpec(tuple(resolve(model, [site])), pooling, tokens)
    encoded = [encode(dataclasses.replace(s, response=None), processor) for s in samples]
    pad = pad_token_id(processor)
    out = np.zeros((len(samples), refs[site].width), np.float32)
    plan = plan_batches([len(e["input_ids"]) for e in encoded], batch_size)
    for rows in plan:
        batch = model_batch(model, collate([encoded[i] for i in rows], pad, len(plan[0])), pad)  # the last filled
        out[rows] = pooled_batch(model, batch, spec)[site][: len(rows)]  # taken as prepared
    return out
