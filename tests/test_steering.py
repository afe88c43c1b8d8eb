"""Concept steering: the elastic-net solver, screening, concept atoms, SAEs, annotation, the residual edits
(against forward hooks on transformers), their files, and DACO/MOP as defenses."""

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from sklearn.linear_model import ElasticNet

import hf_tiny
import sgm_jax
from sgm_jax.defenses import by_stage
from sgm_jax.defenses.daco import DACO, MOP
from sgm_jax.models.fingerprint import model_fingerprint
from sgm_jax.responses.sites import SiteError
from sgm_jax.runtime.errors import InputError, OptionError
from sgm_jax.steering.annotate import DESIRABLE, NONE, UNDESIRABLE, annotate, label_atoms, load_annotation
from sgm_jax.steering.dictionary import Concept, ConceptDictionary, concept_atoms, load_dictionary
from sgm_jax.steering.edit import steer
from sgm_jax.steering.fista import elastic_net, lipschitz, screened_atoms, screened_elastic_net
from sgm_jax.steering.sae import SAE, SAEConfig, init_params, load_sae
from sgm_jax.steering.sae_steering import SAEEdit
from sgm_jax.steering.sparse_coding import SparseCodingEdit, SparseCodingSettings
from sgm_jax.steering.stimuli import geometric_distance, read_scores, select_stimuli
from sgm_jax.weights.export import NotFoldableError

SITE = "model.language_model.layers.0"


def unit(rows):
    return (rows / np.linalg.norm(rows, axis=-1, keepdims=True)).astype(np.float32)


def problem(seed, atoms=40, width=16, rows=6):
    rng = np.random.default_rng(seed)
    return unit(rng.normal(size=(atoms, width))), unit(rng.normal(size=(rows, width)))


@pytest.mark.parametrize("lam,tau", [(0.05, 0.95), (0.02, 0.5), (0.2, 0.9)])
def test_fista_reaches_the_elastic_net_optimum(lam, tau):
    atoms, x = problem(0)
    codes = np.asarray(elastic_net(atoms, x, lam=lam, tau=tau, iters=3000, lipschitz_constant=lipschitz(atoms)))
    for row, code in zip(x, codes):
        # scikit-learn's objective is ours divided by the number of rows of its design matrix (the width)
        reference = ElasticNet(alpha=lam / x.shape[1], l1_ratio=tau, fit_intercept=False, tol=1e-12, max_iter=10**6)
        reference.fit(atoms.T.astype(np.float64), row.astype(np.float64))
        np.testing.assert_allclose(code, reference.coef_, atol=1e-4)
    assert (codes == 0).any() and (codes != 0).any()  # sparse, not trivial
    gram = jnp.asarray(atoms @ atoms.T)  # the Gram form iterates on c G - x D^T: the same optimum
    solve = dict(lam=lam, tau=tau, iters=3000, lipschitz_constant=lipschitz(atoms))
    np.testing.assert_allclose(np.asarray(elastic_net(atoms, x, gram=gram, **solve)), codes, atol=1e-5)


def test_lipschitz_bounds_the_spectral_norm():
    atoms, _ = problem(1)
    estimate = float(lipschitz(atoms))
    exact = np.linalg.norm(atoms, 2) ** 2
    assert exact <= estimate <= exact * 1.02


def test_screening_is_exact_when_it_keeps_the_support_and_keeps_what_must_stay():
    atoms, _ = problem(2)
    rng = np.random.default_rng(2)
    # signals made of a few atoms: their support is what |D x| ranks first, so a screen of 30 keeps it
    x = unit(np.stack([rng.uniform(0.5, 1, 3) @ atoms[rng.choice(40, 3, replace=False)] for _ in range(6)]))
    solve = dict(lam=0.05, tau=0.95, iters=3000, lipschitz_constant=lipschitz(atoms))
    full = np.asarray(elastic_net(atoms, x, **solve))
    keep = np.zeros(len(atoms), bool)
    keep[[3, 17]] = True
    index = np.asarray(screened_atoms(atoms, x, 30, keep))
    assert all({3, 17} <= set(row) for row in index)
    screened = np.asarray(screened_elastic_net(atoms, x, size=30, keep=keep, **solve))
    conservative = [set(np.flatnonzero(f)) <= set(i) for f, i in zip(full, index)]
    assert any(conservative)
    for f, s, ok in zip(full, screened, conservative):
        if ok:
            np.testing.assert_allclose(s, f, atol=1e-5)
    everything = np.asarray(screened_elastic_net(atoms, x, size=len(atoms), keep=keep, **solve))
    np.testing.assert_allclose(everything, full, atol=1e-5)
    gram = jnp.asarray(atoms @ atoms.T)  # each row's block of the Gram matrix instead of its copy of the atoms
    np.testing.assert_allclose(
        np.asarray(screened_elastic_net(atoms, x, size=30, keep=keep, gram=gram, **solve)), screened, atol=1e-5
    )


def test_concept_atoms_are_normalised_differences_of_means():
    rng = np.random.default_rng(3)
    responses = rng.normal(size=(10, 8)).astype(np.float32)
    ids = [f"s{i}" for i in range(10)]
    concepts = [Concept("a", "undesirable", ("s0", "s1", "s2"), ("s5", "s6")), Concept("b", "benign", ("s9",), ids[:4])]
    atoms = concept_atoms(responses, ids, concepts)
    direct = responses[:3].mean(0) - responses[5:7].mean(0)
    np.testing.assert_allclose(atoms[0], direct / np.linalg.norm(direct), atol=1e-6)
    direct = responses[9] - responses[:4].mean(0)
    np.testing.assert_allclose(atoms[1], direct / np.linalg.norm(direct), atol=1e-6)


def test_annotation_follows_the_threshold_rule():
    dist_u = np.asarray([0.1, 0.1, 0.45, 0.6, 0.3, 0.2], np.float32)
    dist_p = np.asarray([0.5, 0.05, 0.9, 0.2, 0.3, 0.19], np.float32)
    labels = label_atoms(dist_u, dist_p, 0.4)
    assert labels.tolist() == [UNDESIRABLE, DESIRABLE, NONE, DESIRABLE, NONE, DESIRABLE]
    assert label_atoms(dist_u, dist_p, 0.0).tolist() == [NONE] * 6


def test_annotate_labels_atoms_by_their_distance_to_the_centroids():
    rng = np.random.default_rng(4)
    concepts = unit(rng.normal(size=(4, 16)))
    dictionary = ConceptDictionary(
        SITE,
        concepts,
        np.zeros(16, np.float32),
        ("u1", "u2", "p", "b"),
        ("undesirable", "undesirable", "desirable", "benign"),
        ("", "", "", ""),
    )
    config = SAEConfig(16, 12, "topk", 3)
    params = init_params(config, mean=np.zeros(16), concept_atoms=concepts, seed=0)
    sae = SAE(SITE, config, params, ("u1", "u2", "p", "b"))
    annotation = annotate(sae, dictionary, 0.35)
    centroid = unit(concepts[:2].mean(0))
    np.testing.assert_allclose(annotation.distance_undesirable, 1 - params["W_dec"] @ centroid, atol=1e-6)
    np.testing.assert_allclose(annotation.distance_desirable, 1 - params["W_dec"] @ concepts[2], atol=1e-6)
    assert annotation.labels[2] == DESIRABLE and annotation.labels[3] == NONE
    assert (
        annotation.labels == label_atoms(annotation.distance_undesirable, annotation.distance_desirable, 0.35)
    ).all()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return hf_tiny.llava_and_reference(tmp_path_factory.mktemp("tiny"), seed=5)


def tiny_batch(model):
    n = model.spec.features_per_image
    ids, mask, pixels = hf_tiny.multimodal_batch(6, pads=[0, 3], length=n + 9, features_per_image=n)
    return ids, mask, pixels


def random_sae(width, seed, atoms=24, kind="topk"):
    rng = np.random.default_rng(seed)
    config = SAEConfig(width, atoms, kind, 5)
    params = init_params(config, mean=rng.normal(size=width) * 0.1, concept_atoms=None, seed=seed)
    params["b_enc"] = rng.normal(size=atoms).astype(np.float32) * 0.1
    params["W_enc"] = (params["W_enc"] * 3 + rng.normal(size=params["W_enc"].shape) * 0.5).astype(np.float32)
    return SAE(SITE, config, params)


def labelled(sae, undesirable, desirable):
    from sgm_jax.steering.annotate import Annotation

    labels = np.zeros(sae.config.atoms, np.int8)
    labels[list(undesirable)] = UNDESIRABLE
    labels[list(desirable)] = DESIRABLE
    zeros = np.zeros(sae.config.atoms, np.float32)
    return Annotation(labels, zeros, zeros, 0.5, sae.digest())


def torch_sae_edit(sae, annotation, gamma):
    p = {k: torch.tensor(v) for k, v in sae.params.items()}
    u = torch.tensor(annotation.undesirable)
    d = torch.tensor(annotation.desirable)

    def edit(z):
        pre = torch.relu((z - p["b_dec"]) @ p["W_enc"] + p["b_enc"])
        top = torch.topk(pre, sae.config.k, dim=-1)
        codes = torch.zeros_like(pre).scatter(-1, top.indices, top.values)
        correction = torch.where(u, -codes, torch.where(d, torch.tensor(gamma), torch.tensor(0.0)))
        return z + correction @ p["W_dec"]

    return edit


def torch_mop_edit(atoms, center, undesirable, desirable, settings):
    D, mu = torch.tensor(atoms, dtype=torch.float64), torch.tensor(center, dtype=torch.float64)
    step = 1.0 / (np.linalg.norm(atoms.astype(np.float64), 2) ** 2)
    u, p = torch.tensor(undesirable, dtype=torch.float64), torch.tensor(desirable, dtype=torch.float64)
    lam, tau = settings.lam, settings.tau

    def edit(h):
        h64 = h.double()
        x = h64 - mu
        norm = x.norm(dim=-1, keepdim=True)
        target = x / norm
        c = y = torch.zeros(x.shape[:-1] + (D.shape[0],), dtype=torch.float64)
        t = 1.0
        for _ in range(settings.iters):
            u_ = y - step * ((y @ D - target) @ D.T)
            c_next = torch.sign(u_) * torch.clamp(u_.abs() - lam * tau * step, min=0) / (1 + lam * (1 - tau) * step)
            t_next = (1 + np.sqrt(1 + 4 * t * t)) / 2
            y = c_next + ((t - 1) / t_next) * (c_next - c)
            c, t = c_next, t_next
        c = c * norm
        return (h64 - (c * u) @ D + settings.gamma * norm * (p @ D)).float()

    return edit


def hooked_logits(hf, edit, ids, mask, pixels, *, layer_output=None):
    module = dict(hf.named_modules())[SITE]

    def hook(m, args, out):
        hidden = out[0] if isinstance(out, tuple) else out
        edited = edit(hidden)
        if layer_output is not None:
            layer_output.append(edited.detach().numpy())
        return (edited,) + tuple(out[1:]) if isinstance(out, tuple) else edited

    handle = module.register_forward_hook(hook)
    try:
        return hf_tiny.reference_logits(hf, ids, mask, pixels)
    finally:
        handle.remove()


def test_sae_steering_equals_the_formula_applied_by_a_hook_on_transformers(tiny):
    model, hf = tiny
    ids, mask, pixels = tiny_batch(model)
    width = model.spec.text.hidden_size
    sae = random_sae(width, 7)
    annotation = labelled(sae, undesirable=[1, 4, 9], desirable=[2, 11])
    steered = steer(model, {SITE: SAEEdit(sae, annotation, gamma=0.7)})
    ours = np.asarray(steered(ids, pixel_values=pixels, attention_mask=mask))
    seen = []
    ref = hooked_logits(hf, torch_sae_edit(sae, annotation, 0.7), ids, mask, pixels, layer_output=seen)
    valid = mask > 0
    np.testing.assert_allclose(ours[valid], ref[valid], atol=1e-5)
    plain = np.asarray(model(ids, pixel_values=pixels, attention_mask=mask))
    assert np.abs(plain[valid] - ours[valid]).max() > 1e-2  # the edit did something
    captured = sgm_jax.collect_responses(
        steered, [{"input_ids": ids, "attention_mask": mask, "pixel_values": pixels}], sites=[SITE], pooling="mean"
    )[SITE]
    reference = (seen[0] * valid[..., None]).sum(1) / valid.sum(1, keepdims=True)
    np.testing.assert_allclose(captured, reference, atol=1e-5)  # the edited residual stream itself


def test_mop_steering_equals_the_formula_applied_by_a_hook_on_transformers(tiny):
    model, hf = tiny
    ids, mask, pixels = tiny_batch(model)
    width = model.spec.text.hidden_size
    rng = np.random.default_rng(8)
    atoms = unit(rng.normal(size=(20, width)))
    center = rng.normal(size=width).astype(np.float32) * 0.05
    undesirable, desirable = np.zeros(20, bool), np.zeros(20, bool)
    undesirable[[0, 5]], desirable[[7]] = True, True
    settings = SparseCodingSettings(lam=0.01, iters=400, gamma=0.3)
    steered = steer(model, {SITE: SparseCodingEdit(atoms, center, undesirable, desirable, settings)})
    ours = np.asarray(steered(ids, pixel_values=pixels, attention_mask=mask))
    ref = hooked_logits(hf, torch_mop_edit(atoms, center, undesirable, desirable, settings), ids, mask, pixels)
    valid = mask > 0
    np.testing.assert_allclose(ours[valid], ref[valid], atol=1e-5)
    plain = np.asarray(model(ids, pixel_values=pixels, attention_mask=mask))
    assert np.abs(plain[valid] - ours[valid]).max() > 1e-3


def test_steering_acts_in_cached_decoding_as_in_the_hooked_transformers_generate(tiny):
    model, hf = tiny
    ids, mask, pixels = tiny_batch(model)
    sae = random_sae(model.spec.text.hidden_size, 9)
    annotation = labelled(sae, undesirable=[0, 3, 5, 8], desirable=[6])
    steered = steer(model, {SITE: SAEEdit(sae, annotation, gamma=1.5)})
    ours = sgm_jax.generate(
        steered, ids, pixel_values=pixels, attention_mask=mask, max_new_tokens=6, eos_token_id=-1, pad_token_id=0
    )
    plain = sgm_jax.generate(
        model, ids, pixel_values=pixels, attention_mask=mask, max_new_tokens=6, eos_token_id=-1, pad_token_id=0
    )
    edit = torch_sae_edit(sae, annotation, 1.5)
    module = dict(hf.named_modules())[SITE]
    handle = module.register_forward_hook(
        lambda m, a, out: (edit(out[0]),) + tuple(out[1:]) if isinstance(out, tuple) else edit(out)
    )
    try:
        with torch.no_grad():
            ref = hf.generate(
                input_ids=torch.tensor(ids),
                attention_mask=torch.tensor(mask),
                pixel_values=torch.tensor(pixels),
                max_new_tokens=6,
                do_sample=False,
                eos_token_id=-1,
                pad_token_id=0,
            )
    finally:
        handle.remove()
    np.testing.assert_array_equal(ours, ref[:, ids.shape[1] :].numpy())
    assert (ours != plain).any()


def test_steering_with_no_labelled_atoms_is_the_identity_bitwise(tiny):
    model, _ = tiny
    ids, mask, pixels = tiny_batch(model)
    width = model.spec.text.hidden_size
    sae = random_sae(width, 10)
    none = np.zeros(20, bool)
    atoms = unit(np.random.default_rng(11).normal(size=(20, width)))
    plain = np.asarray(model(ids, pixel_values=pixels, attention_mask=mask))
    for edit in (
        SAEEdit(sae, labelled(sae, [], []), gamma=2.0),
        SparseCodingEdit(atoms, np.zeros(width, np.float32), none, none, SparseCodingSettings(gamma=1.0)),
    ):
        steered = np.asarray(steer(model, {SITE: edit})(ids, pixel_values=pixels, attention_mask=mask))
        np.testing.assert_array_equal(steered, plain)


def test_steer_refuses_wrong_sites_and_widths(tiny):
    model, _ = tiny
    sae = random_sae(model.spec.text.hidden_size + 1, 12)
    with pytest.raises(OptionError, match="made for another model or site"):
        steer(model, {SITE: SAEEdit(sae, labelled(sae, [0], []))})
    sae = random_sae(model.spec.text.hidden_size, 12)
    with pytest.raises(SiteError, match="nearest"):
        steer(model, {"model.language_model.layers.9": SAEEdit(sae, labelled(sae, [0], []))})
    with pytest.raises(OptionError, match="is 56 wide, the edit is for width 32"):  # the MLP's neurons, not the stream
        steer(model, {"model.language_model.layers.0.mlp.down_proj:in": SAEEdit(sae, labelled(sae, [0], []))})
    once = steer(model, {SITE: SAEEdit(sae, labelled(sae, [0], []))})
    with pytest.raises(OptionError, match="already carries"):
        steer(once, {SITE: SAEEdit(sae, labelled(sae, [1], []))})
    assert all(node.edit is None for _, node in __import__("flax").nnx.iter_graph(model) if hasattr(node, "edit"))


def test_steering_files_save_load_and_refuse_other_models_and_kinds(tiny, tmp_path):
    model, _ = tiny
    width = model.spec.text.hidden_size
    rng = np.random.default_rng(13)
    dictionary = ConceptDictionary(
        SITE,
        unit(rng.normal(size=(3, width))),
        rng.normal(size=width).astype(np.float32),
        ("a", "b", "c"),
        ("undesirable", "desirable", "benign"),
        ("g1", "g2", "g2"),
        {"model_fingerprint": model_fingerprint(model), "pooling": "mean"},
    )
    dictionary.save(str(tmp_path / "d.safetensors"))
    back = load_dictionary(str(tmp_path / "d.safetensors"), model=model)
    assert (
        back.concepts == dictionary.concepts and back.labels == dictionary.labels and back.groups == dictionary.groups
    )
    np.testing.assert_array_equal(back.atoms, dictionary.atoms)
    assert back.metadata["pooling"] == "mean"
    other, _ = hf_tiny.llava_and_reference(tmp_path / "other", seed=99)
    with pytest.raises(InputError, match="made for another model"):
        load_dictionary(str(tmp_path / "d.safetensors"), model=other)
    sae = random_sae(width, 14)
    sae = SAE(SITE, sae.config, sae.params, (), {"model_fingerprint": dictionary.metadata["model_fingerprint"]})
    sae.save(str(tmp_path / "s.safetensors"))
    loaded = load_sae(str(tmp_path / "s.safetensors"), model=model, site=SITE)
    assert loaded.config == sae.config and loaded.digest() == sae.digest()
    with pytest.raises(InputError, match="is for site"):
        load_sae(str(tmp_path / "s.safetensors"), site="model.language_model.layers.1")
    with pytest.raises(InputError, match="made for another model"):
        load_sae(str(tmp_path / "s.safetensors"), model=other)
    with pytest.raises(InputError, match="concept dictionary .*, not a sparse autoencoder file"):
        load_sae(str(tmp_path / "d.safetensors"))
    annotation = annotate(sae, dictionary, 0.8)
    annotation.save(str(tmp_path / "a.safetensors"))
    assert (load_annotation(str(tmp_path / "a.safetensors"), sae=sae).labels == annotation.labels).all()
    retrained = SAE(SITE, sae.config, {**sae.params, "W_dec": sae.params["W_dec"][::-1].copy()})
    with pytest.raises(InputError, match="made for another SAE"):
        load_annotation(str(tmp_path / "a.safetensors"), sae=retrained)


def test_geometric_stimulus_selection(tmp_path):
    assert geometric_distance(1.0, 1.0) == 0.0
    assert geometric_distance(0.9, 0.1) > geometric_distance(0.5, 0.5) > geometric_distance(0.9, 0.9)
    path = tmp_path / "scores.csv"
    rows = ["concept,stimulus,image_similarity,text_similarity"]
    rows += [f"knife,x{i},{0.1 + 0.08 * i:.2f},{0.9 - 0.01 * i:.2f}" for i in range(10)]
    rows += ["knife,both_match,0.95,0.95", "knife,image_only,0.99,0.01"]
    path.write_text("\n".join(rows) + "\n")
    (concept,) = select_stimuli(read_scores(str(path)), {"knife": "undesirable"}, positives=2, negatives=2)
    assert concept.positives[0] == "both_match" and "image_only" in concept.negatives
    path.write_text("concept,stimulus,image_similarity,text_similarity\nknife,a,0.5,-0.2\n")
    with pytest.raises(sgm_jax.data.DatasetError, match="line 2"):
        read_scores(str(path))


def test_steering_is_a_stage_before_the_others():
    sae = random_sae(8, 15)
    daco = DACO(sae, labelled(sae, [0], []))
    assert by_stage([daco])["steer"] == [daco]
    assert daco.describe()["undesirable_atoms"] == 1
    dictionary = ConceptDictionary(
        SITE,
        unit(np.eye(3, 8)),
        np.zeros(8, np.float32),
        ("a", "b", "c"),
        ("undesirable", "benign", "benign"),
        ("", "", ""),
    )
    assert MOP(dictionary).describe()["undesirable"] == ["a"]


def test_a_steered_model_cannot_be_folded_into_weights(tiny, tmp_path):
    model, _ = tiny
    sae = random_sae(model.spec.text.hidden_size, 16)
    steered = steer(model, {SITE: SAEEdit(sae, labelled(sae, [0], []))})
    with pytest.raises(NotFoldableError, match="steering edits"):
        sgm_jax.export_hf(steered, str(tmp_path / "out"))
