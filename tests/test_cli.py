"""`sgm-jax collect` + `sgm-jax score` from the command line on a tiny checkpoint and a JSONL file."""

import argparse
import json
import subprocess
import sys

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

import hf_tiny
import sgm_jax
from sgm_jax import cli
from sgm_jax.data.encode import RawText, encode
from sgm_jax.data.samples import Sample
from sgm_jax.experts.scores import load_scores
from sgm_jax.responses.store import ResponseStore


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return hf_tiny.save_tiny_with_data(tmp_path_factory.mktemp("cli"), seed=8, samples=30, data_seed=2)


def test_collect_then_score_from_the_command_line(checkpoint, tmp_path, capsys):
    directory, data = checkpoint
    store_dir, scores_path = str(tmp_path / "store"), str(tmp_path / "scores.safetensors")
    cli.main(
        [
            "collect",
            "--model",
            directory,
            "--data",
            data,
            "--split",
            "train",
            "--batch-size",
            "5",
            "--out",
            store_dir,
            "--quiet",
        ]
    )
    assert "24 samples x 6 sites" in capsys.readouterr().out  # default sites: gate/up/down in 2 layers
    cli.main(["score", "--store", store_dir, "--out", scores_path, "--quiet"])
    assert "AUROC of" in capsys.readouterr().out

    store = ResponseStore(store_dir)
    scores, metadata = load_scores(scores_path)
    assert set(scores) == set(store.sites)
    assert metadata["pooling"] == "mean" and metadata["n_positive"] + metadata["n_negative"] == 24
    assert metadata["model_fingerprint"] == store.manifest["model_fingerprint"]
    labels = np.asarray(store.labels)
    for site in store.sites:
        responses = store.load(site)
        expected = [roc_auc_score(labels, responses[:, j]) for j in range(responses.shape[1])]
        np.testing.assert_allclose(scores[site], expected, atol=1e-6, err_msg=site)


def test_intervention_then_evaluate_from_the_command_line(checkpoint, tmp_path, capsys):
    directory, data = checkpoint
    store_dir, scores_path = str(tmp_path / "store"), str(tmp_path / "scores.safetensors")
    cli.main(["collect", "--model", directory, "--data", data, "--out", store_dir, "--quiet"])
    cli.main(["score", "--store", store_dir, "--out", scores_path, "--quiet"])
    iv_path = str(tmp_path / "iv.safetensors")
    cli.main(["intervention", "--scores", scores_path, "--threshold", "0.3", "--out", iv_path])
    *_, printed, protocol = capsys.readouterr().out.strip().splitlines()  # after collect's and score's lines
    iv = sgm_jax.load_intervention(iv_path)
    assert iv.metadata["threshold"] == 0.3 and iv.metadata["pooling"] == "mean" and iv.num_changed() > 0
    scores, _ = sgm_jax.load_scores(scores_path)
    total = sum(len(s) for s in scores.values())
    damped = np.concatenate([a[a != 1] for a in iv.alphas.values()])
    sites = sum(bool((a != 1).any()) for a in iv.alphas.values())
    assert printed == (
        f"aura: {iv.num_changed():,} of {total:,} scored neurons changed ({iv.num_changed() / total:.1%}), at "
        f"{sites} of {len(scores)} sites; mean alpha of those {damped.mean():.3f} -> {iv_path}"
    )
    assert protocol.startswith("the experts were scored on mean-pooled responses; SGM pools with the mean, AurA's")
    lexicon = tmp_path / "lexicon.txt"
    lexicon.write_text("bad\nword\n")
    neutral = tmp_path / "neutral.txt"
    neutral.write_text("a red square above a blue circle\ndescribe the picture please\n")
    out = str(tmp_path / "eval")
    cli.main(
        [
            "evaluate",
            "--model",
            directory,
            "--data",
            data,
            "--split",
            "test",
            "--intervention",
            iv_path,
            "--judge",
            f"lexicon:{lexicon}",
            "--neutral",
            str(neutral),
            "--scores",
            scores_path,
            "--max-new-tokens",
            "3",
            "--out",
            out,
            "--quiet",
        ]
    )
    printed = capsys.readouterr().out
    assert "| harmful rate |" in printed and "| perplexity (neutral text) |" in printed
    results = json.loads(open(f"{out}/results.json").read())
    assert results["settings"]["after"]["harmful_rate"]["all"]["n"] == 2  # s0 and s15 are the harmful test items
    assert results["intervention"]["method"] == "aura"
    with pytest.raises(ValueError, match="--method det0 needs --k"):
        cli.run(["intervention", "--scores", scores_path, "--method", "det0", "--out", iv_path])


def test_sites_command_lists_names_and_widths(checkpoint, capsys):
    cli.main(["sites", "--model", checkpoint[0], "model.language_model.layers.1.mlp.*"])
    lines = capsys.readouterr().out.splitlines()
    assert "model.language_model.layers.1.mlp.down_proj:in\t56" in lines
    assert all(line.startswith("model.language_model.layers.1.mlp") for line in lines)


def test_every_option_is_documented():
    listed = subprocess.run([sys.executable, "-m", "sgm_jax.cli", "--help"], capture_output=True, text=True, check=True)
    commands = cli.build_parser()._subparsers._group_actions[0].choices
    for command, parser in commands.items():
        assert command in listed.stdout
        nested = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        for sub in [parser] + [p for a in nested for p in a.choices.values()]:
            out = sub.format_help()
            for action in sub._actions:
                if isinstance(action, argparse._SubParsersAction):
                    continue
                for flag in action.option_strings:
                    assert flag in out, (command, flag)
                assert action.help, (command, action.dest)


def test_raw_text_gives_the_prompt_as_plain_text(checkpoint, tmp_path, capsys):
    """--raw-text: the prompt reaches the model as the tokenizer reads plain text (no chat template), in generate,
    collect (whose store says so) and evaluate; an image has no place in raw text and is named."""
    directory, data = checkpoint
    model, processor = sgm_jax.load_model(directory)
    tokenizer = processor.tokenizer
    prompt = "a red square above"
    cli.main(["generate", "--model", directory, "--prompt", prompt, "--raw-text", "--max-new-tokens", "4"])
    ids = np.asarray(tokenizer(prompt)["input_ids"])[None]
    expected = tokenizer.decode(sgm_jax.generate(model, ids, max_new_tokens=4)[0], skip_special_tokens=True)
    assert capsys.readouterr().out.strip() == expected.strip()
    raw = RawText(processor)
    sample = Sample(id="x", prompt=prompt, response="a blue circle", system="be kind")
    assert (
        list(encode(sample, raw)["input_ids"]) == tokenizer("be kind\n\na red square above a blue circle")["input_ids"]
    )
    assert list(encode(sample, raw)["input_ids"]) != list(encode(sample, processor)["input_ids"])
    texts = tmp_path / "texts.jsonl"
    texts.write_text(
        "".join(json.dumps({"id": f"t{i}", "prompt": f"word {i} is", "label": i % 2}) + "\n" for i in range(4))
    )
    store = tmp_path / "store"
    cli.main(["collect", "--model", directory, "--data", str(texts), "--out", str(store), "--raw-text", "--quiet"])
    assert json.loads((store / "manifest.json").read_text())["prompts"] == "raw text"
    argv = ["--data", data, "--raw-text", "--out", str(tmp_path / "e"), "--quiet"]  # rows with images
    with pytest.raises(SystemExit):
        cli.main(["evaluate", "--model", str(tmp_path / "no-model"), *argv])  # refused before the model loads
    assert f"{data}:1: an image cannot be shown in raw text" in capsys.readouterr().err
