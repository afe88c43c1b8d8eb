"""The family conformance suite: every property a family must have, checked on every row of `families.FAMILIES`
(the six image families and the two text families) on tiny random checkpoints with their processors.

Against transformers (fp32, eager attention): logits and every intermediate (vision states, projector, each
decoder hidden state) to 1e-4 on every config variant, and on a batch without images; site names are transformers'
module names, with their widths; greedy generation token for token, without and with gates and a Linear-AcT
transport (forward hooks on transformers' side); the refusal direction's ablation and addition equal
andyrdt/refusal_direction's hooks; pooled capture equals forward hooks pooled the same way; an export
with the gates folded loads in transformers and gives the gated logits (with the head tied and untied). Of sgm_jax
alone: the key layouts a family's checkpoints come in (the hub's, `save_pretrained`'s, transformers' in-memory
names) load to the same logits; an 8-device mesh gives the one-device logits; inputs that do not fit and config
values the port does not implement are refused by name; a gated model round-trips through orbax exactly; bfloat16
loads and runs.

Each family's checkpoint is built once (module-scoped); its tests run together and its compiled programs are
dropped after them. Family-specific behaviour (tile layouts, M-RoPE positions, cross masks, ...) is tested in the
family's own file.
"""

from __future__ import annotations

import functools
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from safetensors.torch import save_file

import hf_tiny
import sgm_jax
from families import FAMILIES, our_activations, tokenizer_of
from sgm_jax.interventions import Intervention, compose
from sgm_jax.models.config import UnsupportedConfigError
from sgm_jax.responses.sites import list_sites, resolve, site_refs, stream_writers
from sgm_jax.steering.refusal import ablated, added
from sgm_jax.weights import sharding
from sgm_jax.weights.export import export_hf
from sgm_jax.weights.orbax import load_checkpoint, save_checkpoint

TOL = 1e-4
SPREAD_BY = "family"  # conftest.py: the two workers share this file a checkpoint at a time
# Every family's default checkpoint first, then the other variants: a family's default has the same index in
# each list, so pytest runs all of a family's tests on one built checkpoint.
DEFAULTS = [(name, case.default) for name, case in FAMILIES.items()]
VARIANTS = DEFAULTS + [(name, v) for name, case in FAMILIES.items() for v in case.variants if v != case.default]
IMAGES = [(name, variant) for name, variant in DEFAULTS if FAMILIES[name].images]
# A head tied to the embeddings folds and exports differently: the variants that tie or untie it export too.
EXPORTS = DEFAULTS + [(name, v) for name, v in VARIANTS[len(DEFAULTS) :] if "tie" in FAMILIES[name].variants[v]]
assert IMAGES == DEFAULTS[: len(IMAGES)], "image families come first in the table"


def _ids(pairs):
    return [name if variant == FAMILIES[name].default else f"{name}-{variant}" for name, variant in pairs]


def over(pairs):
    """Parametrize a test over the `family` fixture for these (family, variant) pairs."""
    return pytest.mark.parametrize("family", pairs, ids=_ids(pairs), indirect=True)


class Family:
    """A row's checkpoint as loaded by sgm_jax, with transformers' model of it on first use."""

    def __init__(self, name: str, variant: str, directory: str):
        self.case, self.variant, self.directory = FAMILIES[name], variant, directory
        self.model, self.processor = sgm_jax.load_model(directory)

    @functools.cached_property
    def hf(self):
        return self.case.load_reference(self.directory)

    def batch(self, rows=None, seed: int = 0) -> dict[str, np.ndarray]:
        return self.case.batch(self.processor, rows, seed)


@pytest.fixture(scope="module")
def family(request, tmp_path_factory):
    name, variant = request.param
    directory = FAMILIES[name].save(str(tmp_path_factory.mktemp(f"{name}-{variant}")), seed=3, variant=variant)
    yield Family(name, variant, directory)
    jax.clear_caches()  # the next family compiles its own programs


def _valid(batch):
    return batch["attention_mask"].astype(bool)


def _assert_close(ours, theirs, what, valid=None):
    ours, theirs = np.asarray(ours), np.asarray(theirs)
    assert ours.shape == theirs.shape, f"{what}: shape {ours.shape}, transformers {theirs.shape}"
    error = np.abs(ours - theirs) if valid is None else np.abs(ours - theirs)[valid]
    assert error.max() <= TOL, f"{what}: max abs error {error.max():.2e}"


def _gates(family: Family, seed: int, *, inputs: bool = True) -> Intervention:
    """Random alphas at two decoder sites (one `:in`, left out without `inputs`), the image sites and the
    family's extra sites."""
    layers = family.model.decoder_layers
    names = [f"{layers}.0.mlp.up_proj", *family.case.image_sites, *family.case.extra_gates]
    if inputs:
        names.append(f"{layers}.1.mlp.down_proj:in")
    widths, rng = list_sites(family.model), np.random.default_rng(seed)
    return Intervention({name: rng.uniform(0.2, 1.5, widths[name]).astype(np.float32) for name in names})


def _gates_and_transport(family: Family, seed: int) -> Intervention:
    """`_gates`, then a Linear-AcT-style transport at a decoder MLP site: each neuron moved only on one side
    of 0 (its support), so values inside and outside the support both occur."""
    site = f"{family.model.decoder_layers}.1.mlp.up_proj"
    width, rng = list_sites(family.model)[site], np.random.default_rng(seed)
    below = np.arange(width) % 2 == 0
    transport = np.stack(
        [
            rng.uniform(0.3, 1.6, width),
            rng.normal(0, 0.05, width),
            np.where(below, -np.inf, 0.0),
            np.where(below, 0.0, np.inf),
        ]
    )
    return compose(_gates(family, seed), Intervention({}, transports={site: transport}))


@over(VARIANTS)
def test_logits_and_every_intermediate_match_transformers(family):
    case, batch = family.case, family.batch()
    ours, ref = our_activations(case, family.model, batch), case.reference(family.hf, batch)
    valid = _valid(batch)
    assert len(ours["hidden_states"]) == len(ref["hidden_states"])
    for i, (a, b) in enumerate(zip(ours["hidden_states"], ref["hidden_states"])):
        _assert_close(a, b, f"decoder hidden state {i}", valid)
    _assert_close(ours["logits"], ref["logits"], "logits", valid)
    assert ("vision" in ref) == ("projector" in ours) == case.images
    if case.images:
        assert len(ours["vision"]) == len(ref["vision"]) > 0
        for i, (a, b) in enumerate(zip(ours["vision"], ref["vision"])):
            _assert_close(a, b, f"vision state {i}")
        _assert_close(ours["projector"], ref["projector"], case.projector)


@over(IMAGES)
def test_a_batch_without_images_matches_transformers(family):
    batch = family.batch([(prompt, ()) for prompt, _ in family.case.rows])
    assert "pixel_values" not in batch
    ref = family.case.reference(family.hf, batch)["logits"]
    _assert_close(np.asarray(family.model(**batch)), ref, "logits", _valid(batch))


@over(DEFAULTS)
def test_sites_are_transformers_module_names_with_their_widths(family):
    sites, modules = list_sites(family.model), dict(family.hf.named_modules())
    assert not sorted({name.removesuffix(":in") for name in sites} - set(modules))
    linear = {name: m for name, m in modules.items() if isinstance(m, torch.nn.Linear)}
    if family.model.lm_head is None:  # a head tied to the embeddings has no weights of its own to gate and fold
        del linear["lm_head"]
    assert {name: sites.get(name) for name in linear} == {name: m.out_features for name, m in linear.items()}
    inputs = {name: sites[f"{name}:in"] for name in linear if f"{name}:in" in sites}
    assert inputs and inputs == {name: linear[name].in_features for name in inputs}
    image_sites = family.case.image_sites
    assert {name: sites.get(name) for name in image_sites} == image_sites
    assert all(ref.image_domain for ref in resolve(family.model, list(image_sites)))
    if not family.case.images:
        assert not any(ref.image_domain for ref in site_refs(family.model).values())


@over(DEFAULTS)
def test_greedy_generate_equals_transformers_with_and_without_gates_and_a_transport(family):
    tokenizer, reset = tokenizer_of(family.processor), family.case.reset_reference
    hf_tiny.assert_generate_matches(
        family.model,
        family.hf,
        family.batch(seed=1),
        _gates_and_transport(family, 7),
        eos=tokenizer.eos_token_id,
        pad=tokenizer.pad_token_id,
        before=reset and functools.partial(reset, family.hf),
    )


@over(DEFAULTS)
def test_refusal_direction_ablation_and_addition_equal_transformers_hooks(family):
    """The refusal direction's edits: ablation at the first layer's input and every attention and MLP output, and
    addition at one layer's input, against andyrdt/refusal_direction's hooks (which also project every layer's
    input: the same, since the stream is the sum of those writes)."""
    model, case = family.model, family.case
    batch, rng = family.batch(seed=4), np.random.default_rng(4)
    direction = rng.normal(size=model.spec.text.hidden_size if hasattr(model.spec, "text") else model.spec.hidden_size)
    writers = stream_writers(model)
    assert any(w.endswith(".mlp") for w in writers) and any(w.endswith("attn") for w in writers)
    valid, plain = _valid(batch), np.asarray(model(**batch))
    for ours, hooks in (
        (ablated(model, direction), dict(ablate=direction, writers=writers)),
        (added(model, direction, 1), dict(add=(1, direction))),
    ):
        with hf_tiny.direction_hooks(family.hf, model.decoder_layers, **hooks):
            if case.reset_reference:
                case.reset_reference(family.hf)
            ref = case.reference(family.hf, batch)["logits"]
        logits = np.asarray(ours(**batch))
        _assert_close(logits, ref, f"logits with {sorted(hooks)}", valid)
        assert np.abs(logits - plain)[valid].max() > 1e-3, "the edit changed nothing"


@over(DEFAULTS)
def test_pooled_capture_equals_hooks_on_transformers(family):
    model, case = family.model, family.case
    rows = case.rows[:2]  # every row with images, for the image-domain sites
    batch = family.batch(rows, seed=2)
    modules = dict(family.hf.named_modules())
    extra = [s for s in case.extra_gates if isinstance(modules[s], torch.nn.Linear)]  # hooks see their output
    sites = [f"{model.decoder_layers}.1.mlp.up_proj", *case.image_sites, *extra]
    image = {ref.name for ref in resolve(model, sites) if ref.image_domain}
    assert image >= set(case.image_sites)
    ours = sgm_jax.collect_responses(model, [batch], sites=sites)

    seen = {}
    handles = [modules[s].register_forward_hook(lambda m, a, y, s=s: seen.__setitem__(s, y.numpy())) for s in sites]
    if case.reset_reference:
        case.reset_reference(family.hf)
    try:
        with torch.no_grad():
            family.hf(**{k: torch.tensor(v) for k, v in batch.items()})
    finally:
        for handle in handles:
            handle.remove()
    valid = _valid(batch)
    image_rows = model.image_rows(batch["input_ids"], {k: v for k, v in batch.items() if k != "input_ids"})
    for site in sites:
        if site in image:  # each image over its positions, then a row's images
            per_image = case.pool_images(model, batch, site, seen[site])
            assert len(per_image) == len(image_rows), site
            expected = np.stack([per_image[image_rows == row].mean(0) for row in range(len(rows))])
        else:
            expected = np.stack([seen[site][r][valid[r]].mean(0) for r in range(len(rows))])
        np.testing.assert_allclose(ours[site], expected, atol=1e-5, rtol=0, err_msg=site)


@over(EXPORTS)
def test_export_with_gates_folded_loads_in_transformers(family, tmp_path):
    gated = sgm_jax.intervene(family.model, _gates(family, 9, inputs=False))
    out = export_hf(gated, str(tmp_path / "export"), processor=family.processor)
    batch = family.batch(seed=5)
    ref = family.case.reference(family.case.load_reference(out), batch)["logits"]
    _assert_close(np.asarray(gated(**batch)), ref, "gated logits", _valid(batch))


def _state_dict_layout(hf, directory: str, out: str) -> str:
    """transformers' in-memory names (`hf.state_dict()`, a tied head once) in one file, beside `directory`'s
    config, processor and tokenizer files."""
    os.makedirs(out)
    tensors, seen = {}, set()
    for key, value in hf.state_dict().items():
        if value.data_ptr() not in seen:
            seen.add(value.data_ptr())
            tensors[key] = value.contiguous()
    save_file(tensors, os.path.join(out, "model.safetensors"), metadata={"format": "pt"})
    for name in os.listdir(directory):
        if not name.startswith("model.safetensors"):
            shutil.copy(os.path.join(directory, name), out)
    return out


@over(DEFAULTS)
def test_the_hub_save_pretrained_and_state_dict_layouts_load(family, tmp_path):
    batch = family.batch(seed=6)
    expected = np.asarray(family.model(**batch))  # loaded from save_pretrained's layout
    directories = {"state_dict": _state_dict_layout(family.hf, family.directory, str(tmp_path / "state_dict"))}
    for name, rename in family.case.layouts.items():
        directories[name] = hf_tiny.rewrite_keys(family.directory, str(tmp_path / name), rename)
    for name, directory in directories.items():
        np.testing.assert_array_equal(np.asarray(sgm_jax.load_model(directory)[0](**batch)), expected, err_msg=name)


@over(DEFAULTS)
def test_eight_device_mesh_gives_the_unsharded_logits(family):
    assert jax.device_count() == 8
    sharded, _ = sgm_jax.load_model(family.directory, mesh=sharding.make_mesh(data=2, fsdp=2, tensor=2))
    params = jax.tree.leaves(nnx.state(sharded, nnx.Param))
    assert any(p.addressable_shards[0].data.shape != p.shape for p in params)  # some weights are split
    batch = family.batch(seed=7)
    np.testing.assert_allclose(np.asarray(sharded(**batch)), np.asarray(family.model(**batch)), atol=1e-5, rtol=0)


@over(DEFAULTS)
def test_inputs_that_do_not_fit_are_refused_by_name(family):
    batch = family.batch()
    refusals = [
        (lambda b: dict(b, token_type_ids=np.zeros_like(b["input_ids"])), r"got inputs \['token_type_ids'\]"),
        *family.case.bad_inputs,
    ]
    for edit, message in refusals:
        with pytest.raises(ValueError, match=message):
            family.model(**edit(batch))


@over(DEFAULTS)
def test_config_values_the_port_lacks_are_refused_by_name(family, tmp_path):
    assert family.case.refused_configs
    for i, (edit, message) in enumerate(family.case.refused_configs):
        directory = tmp_path / str(i)
        directory.mkdir()
        shutil.copy(os.path.join(family.directory, "config.json"), directory)  # the config is refused first
        hf_tiny.edit_config(str(directory), edit)
        with pytest.raises(UnsupportedConfigError, match=message):
            sgm_jax.load_model(str(directory))


@over(DEFAULTS)
def test_a_gated_model_round_trips_through_orbax_exactly(family, tmp_path):
    gated = sgm_jax.intervene(family.model, _gates(family, 4, inputs=False))  # the export's sites: one compile
    batch = family.batch(seed=8)
    save_checkpoint(gated, str(tmp_path / "orbax"))
    restored = load_checkpoint(str(tmp_path / "orbax"))
    np.testing.assert_array_equal(np.asarray(restored(**batch)), np.asarray(gated(**batch)))


@over(DEFAULTS)
def test_bfloat16_loads_and_runs_within_its_rounding(family):
    half, _ = sgm_jax.load_model(family.directory, dtype="bfloat16")
    assert {p.dtype for p in jax.tree.leaves(nnx.state(half, nnx.Param))} == {jnp.dtype(jnp.bfloat16)}
    batch = family.batch(seed=9)
    valid = _valid(batch)
    plain = np.asarray(family.model(**batch))[valid]
    error = np.abs(np.asarray(half(**batch), np.float32)[valid] - plain).max()
    assert np.isfinite(error) and error <= 0.05 * np.abs(plain).max(), error  # bfloat16 keeps 8 bits of mantissa
