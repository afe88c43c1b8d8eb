"""Pooled responses equal what forward hooks on the transformers model record, pooled the same way."""

import numpy as np
import pytest
import torch

import hf_tiny
import sgm_jax
from sgm_jax.responses.sites import SiteError, list_sites

SITES = [
    "model.language_model.embed_tokens",
    "model.language_model.layers.0.self_attn",
    "model.language_model.layers.0.self_attn:in",
    "model.language_model.layers.0.mlp.act_fn",
    "model.language_model.layers.1",
    "model.language_model.layers.1.mlp.up_proj",
    "model.language_model.layers.1.mlp.down_proj:in",
    "model.language_model.norm",
    "lm_head",
    "model.vision_tower.embeddings",
    "model.vision_tower.pre_layrnorm",
    "model.vision_tower.encoder.layers.0.mlp.fc1",
    "model.vision_tower.encoder.layers.1.mlp.fc2:in",
    "model.vision_tower.encoder.layers.2",
    "model.vision_tower.post_layernorm",
    "model.multi_modal_projector",
    "model.multi_modal_projector.act",
    "model.multi_modal_projector.linear_1:in",
]
# HF modules that are not sites: containers whose output is a ModelOutput, and embeddings HF computes
# without a batch dimension (conv patches are NCHW, positions are [1, P, D]).
NOT_SITES = {
    "",
    "model",
    "model.vision_tower",
    "model.vision_tower.encoder",
    "model.vision_tower.encoder.layers",
    "model.vision_tower.embeddings.patch_embedding",
    "model.vision_tower.embeddings.position_embedding",
    "model.language_model",
    "model.language_model.layers",
    "model.language_model.rotary_emb",
}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return hf_tiny.llava_and_reference(tmp_path_factory.mktemp("capture"), seed=4, kv_heads=2)


def _batches(n_features):
    """Two left-padded batches of different lengths (two buckets), one image per row."""
    first = hf_tiny.multimodal_batch(10, pads=[0, 3, 6], length=n_features + 9, features_per_image=n_features)
    second = hf_tiny.multimodal_batch(11, pads=[2, 0], length=n_features + 21, features_per_image=n_features)
    return [dict(input_ids=ids, attention_mask=mask, pixel_values=px) for ids, mask, px in (first, second)]


def _hooked(hf, batch):
    """Full activations at every site, recorded by forward hooks (pre-hooks for `:in`)."""
    modules = dict(hf.named_modules())
    seen, handles = {}, []
    for site in SITES:
        name, is_input = site.removesuffix(":in"), site.endswith(":in")
        if is_input:

            def hook(module, args, kwargs, site=site):
                seen[site] = (args[0] if args else kwargs["hidden_states"]).detach().numpy()

            handles.append(modules[name].register_forward_pre_hook(hook, with_kwargs=True))
        else:

            def hook(module, args, output, site=site):
                seen[site] = (output[0] if isinstance(output, tuple) else output).detach().numpy()

            handles.append(modules[name].register_forward_hook(hook))
    mask = batch["attention_mask"]
    with torch.no_grad():
        hf(
            input_ids=torch.tensor(batch["input_ids"]),
            attention_mask=torch.tensor(mask),
            pixel_values=torch.tensor(batch["pixel_values"]),
            position_ids=torch.tensor(hf_tiny.generate_positions(mask)),
        )
    for handle in handles:
        handle.remove()
    return seen


def _reference_pool(values, select, pooling):
    values = values.astype(np.float64)
    if pooling == "mean":
        return np.stack([v[s].mean(0) for v, s in zip(values, select)])
    if pooling == "max":
        return np.stack([v[s].max(0) for v, s in zip(values, select)])
    return np.stack([v[np.flatnonzero(s)[-1]] for v, s in zip(values, select)])


def _reference(hf, batches, pooling, tokens):
    out = {site: [] for site in SITES}
    for batch in batches:
        seen = _hooked(hf, batch)
        ids, mask = batch["input_ids"], batch["attention_mask"].astype(bool)
        is_image = ids == hf_tiny.IMAGE_TOKEN
        select = {"all": mask, "text": mask & ~is_image, "image": mask & is_image}[tokens]
        for site in SITES:
            values = seen[site]
            if site.startswith(("model.vision_tower", "model.multi_modal_projector")):
                values = values if values.ndim == 3 else values[:, None]
                out[site].append(_reference_pool(values, np.ones(values.shape[:2], bool), pooling))
            else:
                out[site].append(_reference_pool(values, select, pooling))
    return {site: np.concatenate(rows) for site, rows in out.items()}


@pytest.mark.parametrize(
    "pooling, tokens", [("mean", "all"), ("max", "all"), ("last", "all"), ("mean", "text"), ("max", "image")]
)
def test_pooled_responses_equal_forward_hooks(models, pooling, tokens):
    model, hf = models
    batches = _batches(model.spec.features_per_image)
    ours = sgm_jax.collect_responses(model, batches, sites=SITES, pooling=pooling, tokens=tokens)
    ref = _reference(hf, batches, pooling, tokens)
    assert list(ours) == [s for s in list_sites(model) if s in SITES]
    for site in SITES:
        assert ours[site].shape == ref[site].shape == (5, list_sites(model)[site]), site
        np.testing.assert_allclose(ours[site], ref[site], atol=1e-5, rtol=0, err_msg=site)


def test_sites_are_the_hf_module_names(models):
    model, hf = models
    hf_names = set(dict(hf.named_modules())) - NOT_SITES
    ours = {s.removesuffix(":in") for s in list_sites(model)}
    assert ours == hf_names


def test_glob_expands_in_tree_order_and_bad_patterns_name_the_nearest_sites(models):
    model, _ = models
    batches = _batches(model.spec.features_per_image)[:1]
    out = sgm_jax.collect_responses(model, batches, sites=["model.language_model.layers.*.mlp.up_proj"])
    assert list(out) == ["model.language_model.layers.0.mlp.up_proj", "model.language_model.layers.1.mlp.up_proj"]
    with pytest.raises(
        SiteError,
        match=r"'model.language_model.layers.0.mlp.upproj' matches no site.*"
        r"model.language_model.layers.0.mlp.up_proj",
    ):
        sgm_jax.collect_responses(model, batches, sites=["model.language_model.layers.0.mlp.upproj"])
    with pytest.raises(SiteError, match="matches no site"):
        sgm_jax.collect_responses(model, batches, sites=["model.language_model.layers.*.mlp.fc1"])


def test_rows_without_anything_to_pool_are_errors(models):
    model, _ = models
    n = model.spec.features_per_image
    ids, mask, px = hf_tiny.multimodal_batch(0, pads=[0, 0], length=n + 5, features_per_image=n)
    text_only = dict(input_ids=np.where(ids == hf_tiny.IMAGE_TOKEN, 3, ids), attention_mask=mask)
    with pytest.raises(ValueError, match=r"batch rows \[0, 1\] have no 'image' tokens"):
        sgm_jax.collect_responses(model, [text_only], sites=["lm_head"], tokens="image")
    with pytest.raises(ValueError, match=r"batch rows \[0, 1\] have no image, but sites"):
        sgm_jax.collect_responses(model, [text_only], sites=["model.vision_tower.pre_layrnorm"])
    with pytest.raises(ValueError, match="pooling='median'"):
        sgm_jax.collect_responses(model, [text_only], sites=["lm_head"], pooling="median")
