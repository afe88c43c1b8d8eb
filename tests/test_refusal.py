"""The refusal direction: candidates against andyrdt/refusal_direction's mean activations (forward pre-hooks on
transformers), the selection's scores against the same hooks, the paper's choice rule, the orthogonalised export
against the ablated model in transformers, and the command. (Every family's ablation and addition against the
hooks: `test_families.py`.)"""

import json

import numpy as np
import pytest
import torch

import hf_tiny
import sgm_jax
from families import FAMILIES
from sgm_jax import cli
from sgm_jax.responses.sites import stream_writers
from sgm_jax.runtime.errors import InputError
from sgm_jax.steering import refusal
from sgm_jax.weights.export import export_hf
from sgm_jax.weights.orthogonalize import NotOrthogonalizableError, orthogonalized

HARMFUL = [f"how do i hurt {who} with {what}" for who in ("him", "them", "a cat") for what in ("a knife", "poison")]
HARMLESS = [f"how do i help {who} with {what}" for who in ("him", "them", "a cat") for what in ("a book", "water")]


@pytest.fixture(scope="module", params=["llama", "qwen2-tied"])
def text_model(request, tmp_path_factory):
    name, _, variant = request.param.partition("-")
    case = FAMILIES[name]
    directory = case.save(str(tmp_path_factory.mktemp(request.param)), 5, variant or None)
    model, tokenizer = sgm_jax.load_model(directory)
    return directory, model, tokenizer, case


def _hf_batch(tokenizer, instructions):
    texts = [
        tokenizer.apply_chat_template([{"role": "user", "content": t}], tokenize=False, add_generation_prompt=True)
        for t in instructions
    ]
    batch = tokenizer(texts, padding=True, padding_side="left", return_tensors="pt", add_special_tokens=False)
    positions = torch.tensor(hf_tiny.generate_positions(batch["attention_mask"].numpy()))
    return dict(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], position_ids=positions)


def _hf_mean_activations(hf, batch, layers, positions):
    """refusal_direction's `get_mean_activations`: forward pre-hooks on every layer summing its input at the last
    positions, in float64."""
    n = len(hf.model.layers)
    total = torch.zeros((positions, n, hf.config.hidden_size), dtype=torch.float64)

    def hook(layer):
        def fn(module, args, kwargs):
            x = args[0] if args else kwargs["hidden_states"]
            total[:, layer] += x[:, -positions:].to(torch.float64).sum(0)

        return fn

    handles = [hf.model.layers[i].register_forward_pre_hook(hook(i), with_kwargs=True) for i in range(n)]
    with torch.no_grad():
        hf(**batch)
    for handle in handles:
        handle.remove()
    return (total / len(batch["input_ids"])).numpy()


def _hf_last_logprobs(hf, batch):
    with torch.no_grad():
        return torch.log_softmax(hf(**batch).logits[:, -1].to(torch.float64), -1).numpy()


def test_candidates_and_scores_equal_the_papers_hooks(text_model):
    directory, model, tokenizer, case = text_model
    hf = case.load_reference(directory)
    positions = refusal.instruction_positions(tokenizer)
    assert positions == len(
        tokenizer(
            tokenizer.apply_chat_template(
                [{"role": "user", "content": "x"}], tokenize=False, add_generation_prompt=True
            ).split("x")[-1],
            add_special_tokens=False,
        )["input_ids"]
    )
    harmful, harmless = (refusal.prompts(model, tokenizer, s, batch_size=4) for s in (HARMFUL, HARMLESS))
    candidates = refusal.candidate_directions(model, harmful, harmless, positions)
    hf_harmful, hf_harmless = _hf_batch(tokenizer, HARMFUL), _hf_batch(tokenizer, HARMLESS)
    expected = _hf_mean_activations(hf, hf_harmful, "model.layers", positions) - _hf_mean_activations(
        hf, hf_harmless, "model.layers", positions
    )
    np.testing.assert_allclose(candidates, expected, atol=1e-5)

    tokens = refusal.refusal_tokens(tokenizer, ["I", "As"])
    selection = refusal.select_direction(
        model,
        candidates,
        harmful,
        harmless,
        tokens,
        kl_threshold=np.inf,
        induce_threshold=-np.inf,
        prune_layers=0.0,
        progress=False,
    )
    # Every score of one candidate, recomputed through transformers with the paper's hooks.
    p, layer = 0, 1
    r, writers = candidates[p, layer], stream_writers(model)
    with hf_tiny.direction_hooks(hf, "model.layers", writers, ablate=r):
        ablated_harmful, ablated_harmless = _hf_last_logprobs(hf, hf_harmful), _hf_last_logprobs(hf, hf_harmless)
    with hf_tiny.direction_hooks(hf, "model.layers", add=(layer, r)):
        added_harmless = _hf_last_logprobs(hf, hf_harmless)
    plain_harmless = _hf_last_logprobs(hf, hf_harmless)
    assert selection.ablation_refusal[p, layer] == pytest.approx(
        refusal.refusal_scores(ablated_harmful, tokens).mean(), abs=1e-4
    )
    assert selection.addition_refusal[p, layer] == pytest.approx(
        refusal.refusal_scores(added_harmless, tokens).mean(), abs=1e-4
    )
    assert selection.ablation_kl[p, layer] == pytest.approx(
        refusal.kl_divergence(plain_harmless, ablated_harmless).mean(), abs=1e-5
    )
    # The paper's rule (here with no threshold and no layer pruned): the lowest ablated refusal score among the
    # candidates that are directions at all (the first layer's input at the template's tokens is the same in both).
    nonzero = np.linalg.norm(candidates, axis=-1) > 0
    assert not nonzero[:, 0].any() and nonzero[:, 1:].all()
    assert selection.ablation_refusal[selection.position, selection.layer] == selection.ablation_refusal[nonzero].min()
    with pytest.raises(InputError, match="every candidate direction was filtered out"):
        refusal.select_direction(model, candidates, harmful, harmless, tokens, kl_threshold=-1.0, progress=False)


def test_the_orthogonalised_export_loads_in_transformers_and_equals_the_ablated_model(text_model, tmp_path):
    _, model, tokenizer, case = text_model
    direction = np.random.default_rng(0).normal(size=model.spec.hidden_size)
    out = export_hf(orthogonalized(model, direction), str(tmp_path / "orthogonal"), processor=tokenizer)
    batch = _hf_batch(tokenizer, HARMFUL[:3])
    exported = case.load_reference(out)
    with torch.no_grad():
        theirs = exported(**batch).logits.numpy()
    ids, mask = batch["input_ids"].numpy(), batch["attention_mask"].numpy()
    ours = np.asarray(refusal.ablated(model, direction)(ids, attention_mask=mask))
    plain = np.asarray(model(ids, attention_mask=mask))
    valid = mask.astype(bool)
    error = np.abs(theirs - ours)[valid].max()
    print(f"orthogonalised export vs the ablated model: max |logit difference| {error:.1e}")
    assert error <= 1e-4 < np.abs(plain - ours)[valid].max()
    assert json.load(open(f"{out}/config.json"))["tie_word_embeddings"] is False


def test_image_families_refuse_the_fold_by_name(tmp_path):
    model, _ = sgm_jax.load_model(FAMILIES["llava-1.5"].save(str(tmp_path / "llava"), 1))
    with pytest.raises(NotOrthogonalizableError, match="LlavaForConditionalGeneration: image features"):
        orthogonalized(model, np.ones(model.spec.text.hidden_size))


def test_the_command_writes_the_direction_and_the_export(text_model, tmp_path, capsys):
    directory, model, tokenizer, _ = text_model
    harmful, harmless = tmp_path / "harmful.txt", tmp_path / "harmless.txt"
    harmful.write_text("\n".join(HARMFUL) + "\n")
    harmless.write_text("\n".join(HARMLESS) + "\n")
    out, export = str(tmp_path / "direction.safetensors"), str(tmp_path / "export")
    command = ["refusal-direction", "--model", directory, "--harmful", str(harmful), "--harmless", str(harmless)]
    command += ["--val", "2", "--kl-threshold", "1e9", "--induce-threshold=-1e9", "--prune-layers", "0"]
    cli.main(command + ["--out", out, "--export", export, "--quiet"])
    printed = capsys.readouterr().out
    direction, metadata = refusal.load_direction(out)
    assert f"layer {metadata['layer']}, position {metadata['position']}" in printed and export in printed
    assert metadata["train"] == [4, 4] and metadata["val"] == 2
    positions = refusal.instruction_positions(tokenizer)
    harmful_train, harmless_train = (refusal.prompts(model, tokenizer, s[:4]) for s in (HARMFUL, HARMLESS))
    expected = refusal.candidate_directions(model, harmful_train, harmless_train, positions)
    np.testing.assert_allclose(direction, expected[metadata["position"], metadata["layer"]], rtol=1e-5, atol=1e-6)
    exported, _ = sgm_jax.load_model(export)
    assert exported.lm_head is not None
    with pytest.raises(SystemExit):
        cli.main(command[:7] + ["--val", "6", "--out", out])
    assert "leaves none to fit on" in capsys.readouterr().err
