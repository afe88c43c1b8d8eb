"""Broken input and faults, fed to `sgm-jax` as a newcomer would: each case asserts the exit code, the message
(`sgm-jax CMD: error: ...` naming what and where, no traceback) and that nothing was left behind or lost.

Classes: datasets, images, options, checkpoints, interventions, stores, evaluation state and faults (a full
disk, a path that is a file, a concurrent writer, an interrupt). Dataset and image cases give a model path
that does not exist: the dataset is checked whole before the model is loaded, so they never reach it.
"""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image
from safetensors.numpy import load_file, save_file

import hf_tiny
import sgm_jax
from sgm_jax import cli
from sgm_jax.data import read_jsonl
from sgm_jax.judges import chat
from sgm_jax.responses.store import ResponseStore, file_digest
from sgm_jax.runtime.locks import writer_lock

SITES = ["model.language_model.layers.0.mlp.up_proj", "model.language_model.layers.1.mlp.down_proj"]


def _fails(capsys, argv, code=1):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == code
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    return err


def _message(err, command):
    """The message of one error: its first line starts `sgm-jax CMD: error: `, further lines list problems."""
    lines = err.strip().splitlines()
    assert lines and lines[0].startswith(f"sgm-jax {command}: error: "), err
    assert all(line.startswith("  ") for line in lines[1:]), err
    return "\n".join(lines)


def _one_line(err, command):
    message = _message(err, command)
    assert "\n" not in message, err
    return message


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny LLaVA with its processor and a 12-row dataset, shared read-only by the cases."""
    root = tmp_path_factory.mktemp("tiny")
    checkpoint, data = hf_tiny.save_tiny_with_data(root, seed=3, samples=12)
    return checkpoint, data


@pytest.fixture
def dataset(tmp_path):
    """A fresh copy of a small dataset folder a case may break: (folder, jsonl path, rows)."""
    path = hf_tiny.write_dataset(str(tmp_path / "data"), 4)
    with open(path) as f:
        rows = [json.loads(line) for line in f]
    return tmp_path / "data", path, rows


def _write_rows(path, rows):
    with open(path, "w") as f:
        f.write("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")


def _collect(model, data, out, *extra):
    return ["collect", "--model", str(model), "--data", str(data), "--out", str(out), "--quiet", *extra]


# --- datasets: every case refused before the model (which does not exist) is loaded; nothing is written ---

ROW_CASES = {
    "bad JSON": (lambda rows: rows[:1] + ['{"id": "x", "prompt": "hi"'], r"data.jsonl:2: not valid JSON"),
    "misspelt field": (lambda rows: [{**rows[0], "lable": 1}], r"data.jsonl:1: unknown fields \['lable'\]"),
    "missing prompt": (lambda rows: [{"id": "a"}], r"data.jsonl:1: missing 'prompt'"),
    "label 2": (lambda rows: [{**rows[0], "label": 2}], r"data.jsonl:1: label must be 0 or 1, got 2"),
    "reused id": (lambda rows: [rows[0], rows[0]], r"data.jsonl:2: id 's0' already used at .*data.jsonl:1"),
    "image a number": (lambda rows: [{**rows[0], "image": 5}], r"data.jsonl:1: 'image' must be a string, got 5"),
    "response a list": (
        lambda rows: [{**rows[0], "response": ["x"]}],
        r"data.jsonl:1: 'response' must be a string, got \['x'\]",
    ),
    "missing image": (
        lambda rows: [{**rows[0], "image": "images/nope.png"}],
        r"data.jsonl:1: image 'images/nope.png' not found",
    ),
    "image a folder": (lambda rows: [{**rows[0], "image": "images"}], r"data.jsonl:1: image 'images': a folder"),
    "absolute path out": (
        lambda rows: [{**rows[0], "image": "/etc/hostname"}],
        r"data.jsonl:1: image '/etc/hostname' lies outside the dataset's folder .*--allow-outside-images",
    ),
    "../ path out": (
        lambda rows: [{**rows[0], "image": "../elsewhere.png"}],
        r"data.jsonl:1: image '../elsewhere.png' lies outside the dataset's folder",
    ),
}


@pytest.mark.parametrize("case", list(ROW_CASES))
def test_a_malformed_dataset_row_is_named_before_the_model_loads(dataset, tmp_path, capsys, case):
    folder, path, rows = dataset
    Image.new("RGB", (8, 8)).save(tmp_path / "elsewhere.png")
    edit, pattern = ROW_CASES[case]
    _write_rows(path, edit(rows))
    out = tmp_path / "store"
    message = _one_line(_fails(capsys, _collect(tmp_path / "no-model", path, out)), "collect")
    assert re.search(pattern, message), message
    assert not out.exists()


@pytest.mark.parametrize("command", ["evaluate", "compare"])
def test_an_evaluation_row_without_a_label_is_named_before_the_model_loads(dataset, tmp_path, capsys, command):
    folder, path, rows = dataset
    _write_rows(path, [rows[0], {key: value for key, value in rows[1].items() if key != "label"}])
    argv = [command, "--model", str(tmp_path / "no-model"), "--data", path, "--out", str(tmp_path / "out"), "--quiet"]
    message = _one_line(_fails(capsys, argv), command)
    assert message.endswith(
        f"1 open-ended samples have no label (first: {path}:2); `sgm-jax {command}` needs label 1 (harmful) or 0 "
        "(benign) on each"
    ), message
    assert not (tmp_path / "out").exists()


IMAGE_CASES = {
    "random bytes": (lambda p: p.write_bytes(os.urandom(300)), "not an image file PIL can read"),
    "empty file": (lambda p: p.write_bytes(b""), "not an image file PIL can read"),
    "truncated PNG": (lambda p: p.write_bytes(p.read_bytes()[:60]), "cannot be decoded"),
    "decompression bomb": (
        lambda p: Image.new("1", (10_000, 9_000)).save(p),
        r"10000 x 9000 pixels is above the limit of 89,478,485 \(a decompression bomb\?\)",
    ),
}


@pytest.mark.parametrize("case", list(IMAGE_CASES))
def test_a_bad_image_is_named_with_its_row_before_the_model_loads(dataset, tmp_path, capsys, case):
    folder, path, _ = dataset
    damage, pattern = IMAGE_CASES[case]
    damage(folder / "images" / "2.png")
    out = tmp_path / "store"
    message = _one_line(_fails(capsys, _collect(tmp_path / "no-model", path, out)), "collect")
    assert re.search(rf"data.jsonl:3: image 'images/2.png': {pattern}", message), message
    assert not out.exists()


def test_a_symbolic_link_out_of_the_dataset_is_refused_unless_allowed(dataset, tmp_path, capsys):
    folder, path, rows = dataset
    outside = tmp_path / "outside.png"
    Image.new("RGB", (8, 8), "red").save(outside)
    (folder / "images" / "link.png").symlink_to(outside)
    _write_rows(path, [{**rows[0], "image": "images/link.png"}])
    message = _one_line(_fails(capsys, _collect(tmp_path / "no-model", path, tmp_path / "s")), "collect")
    assert f"image 'images/link.png' lies outside the dataset's folder {folder} (it is {outside})" in message
    assert read_jsonl(path, allow_outside_images=True)[0].image == str(folder / "images" / "link.png")


def test_every_problem_of_a_dataset_is_reported_at_once(dataset, tmp_path, capsys):
    folder, path, rows = dataset
    (folder / "images" / "1.png").write_bytes(b"junk")
    _write_rows(path, [rows[0], "not json", {**rows[1]}, {**rows[2], "label": "yes"}, rows[0]])
    message = _message(_fails(capsys, _collect(tmp_path / "no-model", path, tmp_path / "s")), "collect")
    lines = message.splitlines()
    assert lines[0] == f"sgm-jax collect: error: {path}: 4 problems, nothing was run:"
    assert [line.split(": ", 1)[0].strip() for line in lines[1:]] == [f"{path}:{n}" for n in (2, 3, 4, 5)]


@pytest.mark.parametrize(
    "content, message",
    [
        (b"\xff\xfe\x00garbage\n", "not UTF-8 text"),
        (b"\n\n", "no samples"),
    ],
    ids=["not UTF-8", "empty"],
)
def test_an_unreadable_or_empty_dataset_file_is_one_line(tmp_path, capsys, content, message):
    path = tmp_path / "d.jsonl"
    path.write_bytes(content)
    assert f"{path}: {message}" in _one_line(_fails(capsys, _collect(tmp_path / "m", path, tmp_path / "s")), "collect")


def test_a_folder_given_as_the_dataset_is_named(tmp_path, capsys):
    message = _message(_fails(capsys, _collect(tmp_path / "m", tmp_path, tmp_path / "s")), "collect")
    first = message.splitlines()[0]
    assert first.endswith(
        f"{tmp_path}: a folder, but not an MM-SafetyBench data root (no processed_questions/); the formats are:"
    )


def test_a_split_with_no_samples_is_named(dataset, tmp_path, capsys):
    _, path, _ = dataset
    argv = _collect(tmp_path / "m", path, tmp_path / "s", "--split", "validation")
    assert _one_line(_fails(capsys, argv), "collect").endswith(f"{path}: no samples in split 'validation'")


# --- options and the generate command's own inputs ---


def test_a_malformed_mesh_is_named(tiny, tmp_path, capsys):
    argv = ["generate", "--model", tiny[0], "--prompt", "hi", "--mesh", "1,x"]
    assert "--mesh takes DATA,FSDP,TENSOR sizes" in _one_line(_fails(capsys, argv), "generate")


def test_damp_without_k_is_named(tmp_path, capsys):
    argv = ["intervention", "--scores", str(tmp_path / "s"), "--method", "damp", "--out", str(tmp_path / "iv")]
    assert "--method damp needs --k" in _one_line(_fails(capsys, argv), "intervention")
    assert not (tmp_path / "iv").exists()


@pytest.mark.parametrize("kind", ["missing", "damaged"])
def test_a_bad_generate_image_is_named_before_the_model_loads(tmp_path, capsys, kind):
    image = tmp_path / "x.png"
    if kind == "damaged":
        image.write_bytes(b"\x89PNG\r\n\x1a\n broken")
    argv = ["generate", "--model", str(tmp_path / "no-model"), "--prompt", "hi", "--image", str(image)]
    line = _one_line(_fails(capsys, argv), "generate")
    assert str(image) in line and ("no such file" if kind == "missing" else "not an image file") in line


# --- checkpoints ---


@pytest.fixture
def checkpoint_copy(tiny, tmp_path):
    copy = tmp_path / "ckpt"
    shutil.copytree(tiny[0], copy)
    return copy


@pytest.mark.parametrize(
    "damage, pattern",
    [
        (lambda c: shutil.rmtree(c), r"is neither a local directory nor a hub id in the local Hugging Face cache"),
        (lambda c: (c / "config.json").write_text('{"model_type": "llava", '), r"config.json"),
        (
            lambda c: (c / "model.safetensors").write_bytes((c / "model.safetensors").read_bytes()[:5000]),
            r"model.safetensors: a damaged or incomplete safetensors file",
        ),
        (lambda c: (c / "model.safetensors").unlink(), r"no weights|safetensors"),
    ],
    ids=["missing folder", "torn config", "truncated weights", "no weights"],
)
def test_a_damaged_checkpoint_is_named(checkpoint_copy, tmp_path, capsys, damage, pattern):
    damage(checkpoint_copy)
    line = _one_line(_fails(capsys, ["sites", "--model", str(checkpoint_copy)]), "sites")
    assert str(checkpoint_copy) in line and re.search(pattern, line), line


NO_TOKENIZER = (
    "no tokenizer files (looked for tokenizer.json, tokenizer_config.json, tokenizer.model), so text cannot be encoded"
)


def test_a_checkpoint_without_a_tokenizer_is_named(tmp_path, capsys):
    bare = hf_tiny.save_tiny(tmp_path / "bare", seed=1)
    data = hf_tiny.write_dataset(str(tmp_path / "data"), 3)
    capsys.readouterr()
    line = _one_line(_fails(capsys, _collect(bare, data, tmp_path / "s")), "collect")
    assert line.endswith(f"{bare}: {NO_TOKENIZER}")
    assert not (tmp_path / "s").exists()


def test_a_checkpoint_with_processor_files_but_no_tokenizer(checkpoint_copy, capsys):
    """It loads without a processor and lists its sites (they need no text); what encodes text names the files."""
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (checkpoint_copy / name).unlink()
    assert (checkpoint_copy / "processor_config.json").exists()
    assert sgm_jax.load_model(str(checkpoint_copy))[1] is None
    capsys.readouterr()
    cli.main(["sites", "--model", str(checkpoint_copy), "model.language_model.layers.0.mlp.up_proj"])
    assert capsys.readouterr().out.startswith("model.language_model.layers.0.mlp.up_proj\t")
    line = _one_line(_fails(capsys, ["generate", "--model", str(checkpoint_copy), "--prompt", "hi"]), "generate")
    assert line.endswith(f"{checkpoint_copy}: {NO_TOKENIZER}")


def test_a_prompt_longer_than_the_model_positions_is_named(tmp_path, capsys):
    short = hf_tiny.save_tiny(tmp_path / "short", seed=1, processor=True)
    hf_tiny.edit_config(short, lambda c: c["text_config"].update(max_position_embeddings=40))
    data = hf_tiny.write_dataset(str(tmp_path / "data"), 3)
    capsys.readouterr()
    message = _message(_fails(capsys, _collect(short, data, tmp_path / "s")), "collect")
    assert "samples are longer than the model's 40 positions (max_position_embeddings)" in message
    assert re.search(rf"\n  {re.escape(data)}:2: \d+ tokens > 40", message), message
    assert not (tmp_path / "s").exists()
    argv = ["evaluate", "--model", short, "--data", data, "--out", str(tmp_path / "e"), "--quiet"]
    message = _message(_fails(capsys, argv), "evaluate")
    assert "+ 64 new tokens > 40" in message and "lower --max-new-tokens" in message
    assert not (tmp_path / "e").exists()


# --- interventions ---


@pytest.fixture(scope="module")
def collected(tiny, tmp_path_factory):
    """A complete store, its scores and an intervention, made once through the command line."""
    root = tmp_path_factory.mktemp("collected")
    checkpoint, data = tiny
    store, scores, iv = str(root / "store"), str(root / "scores.safetensors"), str(root / "iv.safetensors")
    cli.run(_collect(checkpoint, data, store, "--sites", *SITES, "--batch-size", "4"))
    cli.run(["score", "--store", store, "--out", scores, "--quiet"])
    cli.run(["intervention", "--scores", scores, "--out", iv])
    return store, scores, iv


def _generate(tiny, iv):
    return ["generate", "--model", tiny[0], "--prompt", "hi", "--max-new-tokens", "2", "--intervention", str(iv)]


def test_a_scores_file_given_as_an_intervention_says_how_to_build_one(tiny, collected, capsys):
    _, scores, _ = collected
    line = _one_line(_fails(capsys, _generate(tiny, scores)), "generate")
    assert f"{scores} is an sgm_jax scores file" in line and "sgm-jax intervention --scores" in line


def _rewrite_intervention(source, target, edit):
    from safetensors import safe_open

    with safe_open(source, "numpy") as f:
        metadata = f.metadata()
    save_file(edit(load_file(source)), str(target), metadata=metadata)


@pytest.mark.parametrize(
    "edit, pattern",
    [
        (lambda t: {k: np.full_like(v, np.nan) for k, v in t.items()}, r"NaN|not finite|finite"),
        (lambda t: {k: -np.ones_like(v) for k, v in t.items()}, r"negative|>= 0"),
        (lambda t: {"model.language_model.layers.9.mlp.up_proj": next(iter(t.values()))}, r"layers.9"),
        (lambda t: {k: np.ones(3, np.float32) for k in t}, r"3|width"),
    ],
    ids=["NaN alphas", "negative alphas", "unknown site", "wrong width"],
)
def test_a_wrong_intervention_is_named_with_its_site(tiny, collected, tmp_path, capsys, edit, pattern):
    bad = tmp_path / "bad.safetensors"
    _rewrite_intervention(collected[2], bad, edit)
    line = _one_line(_fails(capsys, _generate(tiny, bad)), "generate")
    assert re.search(pattern, line), line


# --- stores ---


def _copy_store(collected, tmp_path):
    copy = tmp_path / "store"
    shutil.copytree(collected[0], copy)
    return copy


def test_a_flipped_bit_in_a_responses_file_is_named_with_its_site(collected, tmp_path, capsys):
    store = _copy_store(collected, tmp_path)
    path = store / "responses" / (SITES[1].replace(":", "@") + ".npy")
    data = bytearray(path.read_bytes())
    data[-5] ^= 0x10
    path.write_bytes(bytes(data))
    argv = ["score", "--store", str(store), "--out", str(tmp_path / "s.safetensors"), "--quiet"]
    line = _one_line(_fails(capsys, argv), "score")
    assert f"{path} (site '{SITES[1]}') is damaged or missing; rerun the collect command" in line
    assert not (tmp_path / "s.safetensors").exists()


def test_a_damaged_responses_file_is_collected_again_on_the_rerun(tiny, collected, tmp_path):
    store = _copy_store(collected, tmp_path)
    path = store / "responses" / (SITES[0] + ".npy")
    path.write_bytes(path.read_bytes()[:100])
    cli.run(_collect(tiny[0], tiny[1], store, "--sites", *SITES, "--batch-size", "4"))
    for site in SITES:
        np.testing.assert_array_equal(ResponseStore(str(store)).load(site), ResponseStore(collected[0]).load(site))


def test_nan_responses_are_named_with_their_site(collected, tmp_path, capsys):
    store = _copy_store(collected, tmp_path)
    path = store / "responses" / (SITES[0] + ".npy")
    array = np.load(path)
    array[3, 1] = np.nan
    np.save(path, array)
    manifest = json.loads((store / "manifest.json").read_text())
    manifest["checksums"][SITES[0]] = file_digest(str(path))
    (store / "manifest.json").write_text(json.dumps(manifest))
    argv = ["score", "--store", str(store), "--out", str(tmp_path / "s.safetensors"), "--quiet"]
    line = _one_line(_fails(capsys, argv), "score")
    assert f"site '{SITES[0]}'" in line and "NaN or inf" in line and "column 1 rows [3]" in line


def test_a_torn_manifest_is_named_when_read(collected, tmp_path, capsys):
    store = _copy_store(collected, tmp_path)
    (store / "manifest.json").write_text('{"format": "sgm_jax.respo')
    argv = ["score", "--store", str(store), "--out", str(tmp_path / "s.safetensors"), "--quiet"]
    line = _one_line(_fails(capsys, argv), "score")
    assert f"{store / 'manifest.json'} is damaged" in line and "rerun the collect command" in line


def test_an_incomplete_or_hand_edited_store_is_named(collected, tmp_path, capsys):
    store = _copy_store(collected, tmp_path)
    manifest = json.loads((store / "manifest.json").read_text())
    argv = ["score", "--store", str(store), "--out", str(tmp_path / "s.safetensors"), "--quiet"]
    (store / "manifest.json").write_text(json.dumps({**manifest, "complete": False}))
    assert "incomplete: rerun the same collect command" in _one_line(_fails(capsys, argv), "score")
    del manifest["sample_ids"]
    (store / "manifest.json").write_text(json.dumps(manifest))
    assert "lacks the fields ['sample_ids']" in _one_line(_fails(capsys, argv), "score")
    assert not (tmp_path / "s.safetensors").exists()


def test_a_store_made_differently_names_the_field(tiny, collected, capsys):
    argv = _collect(tiny[0], tiny[1], collected[0], "--sites", *SITES, "--batch-size", "4", "--pooling", "max")
    line = _one_line(_fails(capsys, argv), "collect")
    assert "was made differently" in line and "pooling: store has 'mean', asked for 'max'" in line


@pytest.mark.parametrize("damage", ["truncated", "flipped bit", "torn manifest"])
def test_a_damaged_interrupted_store_heals_on_the_rerun(tiny, collected, tmp_path, capsys, monkeypatch, damage):
    """Collect with one batch left undone, damage what is on disk, rerun: the result equals a clean run."""
    import sgm_jax.responses.collect as collect_module
    from sgm_jax.data import read_jsonl

    model, processor = sgm_jax.load_model(tiny[0])
    out = tmp_path / "store"
    real, calls = collect_module.pooled_batch, []

    def stop_at_the_third_batch(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(collect_module, "pooled_batch", stop_at_the_third_batch)
    with pytest.raises(KeyboardInterrupt):
        collect_module.collect_to_store(
            model, processor, read_jsonl(tiny[1]), str(out), sites=SITES, batch_size=4, progress=False
        )
    monkeypatch.setattr(collect_module, "pooled_batch", real)
    chunk = out / "chunks" / "000001.safetensors"
    if damage == "truncated":
        chunk.write_bytes(chunk.read_bytes()[:-40])
    elif damage == "flipped bit":
        data = bytearray(chunk.read_bytes())
        data[-3] ^= 0x01
        chunk.write_bytes(bytes(data))
    else:
        (out / "manifest.json").write_text("")
    capsys.readouterr()
    cli.run(_collect(tiny[0], tiny[1], out, "--sites", *SITES, "--batch-size", "4"))
    err = capsys.readouterr().err
    assert ("manifest.json was damaged" if damage == "torn manifest" else "1 damaged chunks removed") in err
    for site in SITES:
        np.testing.assert_array_equal(ResponseStore(str(out)).load(site), ResponseStore(collected[0]).load(site))


def test_a_second_writer_is_told_who_holds_the_store(tiny, collected, tmp_path, capsys):
    store = tmp_path / "busy"
    with writer_lock(str(store), "store"):
        line = _one_line(_fails(capsys, _collect(tiny[0], tiny[1], store, "--sites", *SITES)), "collect")
    assert f"store {store} is being written by process {os.getpid()} on " in line and "wait for it" in line
    assert not store.exists()


# --- evaluation state ---


def test_a_damaged_answer_cache_header_is_named(tiny, tmp_path, capsys):
    out = tmp_path / "eval"
    out.mkdir()
    (out / "answers_before.jsonl").write_text('{"settings": {"mod\n{"id": "s1", "answer": "x"}\n')
    argv = ["evaluate", "--model", tiny[0], "--data", tiny[1], "--out", str(out), "--quiet", "--max-new-tokens", "2"]
    line = _one_line(_fails(capsys, argv), "evaluate")
    assert f"answer cache {out / 'answers_before.jsonl'}: its first line (the settings) is damaged" in line
    assert (out / "answers_before.jsonl").read_text().endswith('"answer": "x"}\n')  # nothing lost


def test_a_dead_judge_endpoint_is_one_line(tiny, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("SGM_JAX_JUDGE_BASE_URL", "http://127.0.0.1:9/v1")
    monkeypatch.setenv("SGM_JAX_JUDGE_MODEL", "guard")
    monkeypatch.setenv("SGM_JAX_JUDGE_CACHE", str(tmp_path / "judge-cache"))
    waits = []
    monkeypatch.setattr(chat.time, "sleep", waits.append)  # the retries' backoff, recorded instead of slept
    out = tmp_path / "eval"
    argv = ["evaluate", "--model", tiny[0], "--data", tiny[1], "--out", str(out), "--quiet", "--judge", "chat"]
    line = _one_line(_fails(capsys, [*argv, "--max-new-tokens", "2", "--limit", "4"]), "evaluate")
    assert "127.0.0.1:9" in line
    assert sorted(set(waits)) == [1.0, 2.0, 4.0, 8.0, 16.0]  # it retried with the documented backoff first
    assert len((out / "answers_before.jsonl").read_text().splitlines()) == 5  # the answers are kept for the rerun


# --- faults ---


def test_an_output_path_under_a_file_names_the_path(tiny, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    line = _one_line(_fails(capsys, _collect(tiny[0], tiny[1], blocker / "store", "--sites", *SITES)), "collect")
    assert line.endswith(f"Not a directory: {blocker / 'store'}")
    assert blocker.read_text() == "x"


def _cli_process(argv, *, file_size_limit: int | None = None):
    """`sgm-jax ARGV` in a fresh process (started without forking this multithreaded one), optionally under a
    shell's `ulimit -f` (in 1024-byte blocks)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "JAX_PLATFORMS": "cpu"}
    command = [sys.executable, "-m", "sgm_jax.cli", *argv]
    if file_size_limit is not None:
        command = ["bash", "-c", f'ulimit -f {file_size_limit} && exec "$@"', "limited", *command]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)


@pytest.mark.parametrize("limit, file", [(0, ".lock"), (1, "chunks/000000.safetensors")])
def test_a_full_disk_names_the_file_and_loses_nothing(tiny, tmp_path, limit, file):
    """A write limit (`ulimit -f`: to the writer a full disk looks the same): at the first write nothing is left;
    at the first chunk the store is kept, whole, for the rerun, which finishes it once there is room."""
    out = tmp_path / "store"
    argv = _collect(tiny[0], tiny[1], out, "--sites", *SITES)
    process = _cli_process(argv, file_size_limit=limit)
    _, err = process.communicate(timeout=300)
    err = err.decode()
    assert process.returncode == 1, err
    assert err.strip().splitlines()[-1] == f"sgm-jax collect: error: File too large: {out / file}"
    assert "Traceback" not in err
    if limit == 0:
        assert not out.exists()
    else:
        assert sorted(os.listdir(out)) == [".lock", "chunks", "manifest.json"] and not os.listdir(out / "chunks")
        cli.run(argv)
        assert ResponseStore(str(out)).complete


def test_an_interrupt_exits_130_and_the_rerun_finishes_the_store(tiny, tmp_path):
    """Interrupted after its first chunk, with hundreds of one-row batches still to go (so the signal cannot land
    after the last one, however the machine schedules the two processes), and resumed to the same store."""
    out, reference = tmp_path / "store", tmp_path / "reference"
    data = hf_tiny.write_dataset(str(tmp_path / "data"), 300, uniform=True)
    argv = _collect(tiny[0], data, out, "--sites", *SITES, "--batch-size", "1")
    process = _cli_process(argv)
    chunks = out / "chunks"
    while process.poll() is None and not (chunks.is_dir() and os.listdir(chunks)):
        time.sleep(0.01)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=300)
    err = err.decode()
    assert process.returncode == 130, err
    assert err.strip().splitlines()[-1] == "sgm-jax collect: interrupted; rerun the same command to resume"
    assert "Traceback" not in err
    assert not ResponseStore(str(out)).complete, "the run finished before it could be interrupted"
    cli.run(argv)
    cli.run(_collect(tiny[0], data, reference, "--sites", *SITES, "--batch-size", "1"))
    for site in SITES:
        np.testing.assert_array_equal(ResponseStore(str(out)).load(site), ResponseStore(str(reference)).load(site))
