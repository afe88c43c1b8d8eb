"""The persistent compilation cache: a second run of a command with the same shapes compiles nothing; `off` and the
default folder are what the README says; a run compiles one program per role where padding is cheap."""

import dataclasses
import os
import time

import jax
import numpy as np

import hf_tiny
import sgm_jax
from sgm_jax import cli
from sgm_jax.data import read_jsonl
from sgm_jax.data.encode import encode
from sgm_jax.decoding.answering import plain_answers
from sgm_jax.evaluate import answers
from sgm_jax.evaluate.answers import generate_answers
from sgm_jax.responses import collect
from sgm_jax.runtime import compile_cache
from sgm_jax.runtime.buckets import bucket_length
from sgm_jax.runtime.compiles import count_compiles
from sgm_jax.weights import loading


def _watch(monkeypatch, module, name: str) -> list[dict]:
    """Wrap `module.name`: each call records when it started and ended, and what compiled meanwhile."""
    calls, original = [], getattr(module, name)

    def watched(*args, **kwargs):
        call = {"started": time.monotonic()}
        calls.append(call)
        with count_compiles() as call["compiled"]:
            original(*args, **kwargs)
        call["ended"] = time.monotonic()

    monkeypatch.setattr(module, name, watched)
    return calls


def test_a_second_collect_loads_every_program_from_the_cache(tmp_path, monkeypatch):
    model, data = hf_tiny.save_tiny_with_data(tmp_path, seed=4, samples=12)
    cache = tmp_path / "xla"
    monkeypatch.setenv(compile_cache.ENV, compile_cache.OFF)  # what the rest of the suite gets back afterwards
    command = ["--compile-cache", str(cache), "collect", "--model", model, "--data", data, "--quiet", "--out"]
    warmed, loaded = _watch(monkeypatch, collect, "warm_capture"), _watch(monkeypatch, loading, "load_into")
    try:
        with count_compiles() as first:
            cli.run(command + [str(tmp_path / "first")])
        jax.clear_caches()  # as a new process starts: no program in memory
        with count_compiles() as second:
            cli.run(command + [str(tmp_path / "second")])
    finally:  # the command set the variable itself, as a user's does; the rest of the suite compiles afresh
        os.environ[compile_cache.ENV] = compile_cache.OFF
        compile_cache.enable()
    # the capture compiled once, ahead of time while the weights loaded, and the run's own call compiled nothing
    assert warmed[0]["started"] < loaded[0]["ended"]
    assert first.programs["pooled_responses"] == 1 and warmed[0]["compiled"].programs["pooled_responses"] == 1
    assert second.count == 0 and second.cached >= first.count
    assert len(list(cache.iterdir())) >= first.count
    assert not jax.config.jax_enable_compilation_cache  # off again for the tests that follow


def test_off_turns_the_cache_off_and_the_default_is_under_the_users_cache_folder(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert compile_cache.default_directory() == str(tmp_path / "sgm_jax" / "xla")
    monkeypatch.setenv(compile_cache.ENV, "off")
    assert compile_cache.enable() is None
    assert not jax.config.jax_enable_compilation_cache


def test_a_command_says_what_it_compiled_and_what_the_cache_supplied(tmp_path, monkeypatch, capsys):
    model, data = hf_tiny.save_tiny_with_data(tmp_path, seed=5, samples=8)
    monkeypatch.setenv(compile_cache.ENV, compile_cache.OFF)
    command = ["--compile-cache", str(tmp_path / "xla"), "collect", "--model", model, "--data", data, "--out"]
    jax.clear_caches()  # nothing compiled by an earlier test in this process
    try:
        cli.main(command + [str(tmp_path / "first")])
        first = capsys.readouterr().err.strip().splitlines()[-1]
        jax.clear_caches()
        cli.main(command + [str(tmp_path / "second")])
        second = capsys.readouterr().err.strip().splitlines()[-1]
        cli.main(command + [str(tmp_path / "quiet"), "--quiet"])
        quiet = capsys.readouterr().err
    finally:
        os.environ[compile_cache.ENV] = compile_cache.OFF
        compile_cache.enable()
    n = int(first.split(": ")[1].split()[0])
    assert n > 0 and first.startswith("sgm-jax collect: ")
    assert "pooled_responses x1" in first  # which programs: the capture, once per length bucket
    counts = [int(part.rsplit(" x", 1)[1]) for part in first.split(" s (", 1)[1].rstrip(")").split(", ")]
    assert sum(counts) == n
    assert second.startswith("sgm-jax collect: 0 programs compiled in 0.0 s, ")
    assert second.endswith(" loaded from the compile cache")
    assert quiet == ""


def test_an_evaluation_compiles_one_generate_program_whatever_its_prompt_lengths(tmp_path):
    directory, data = hf_tiny.save_tiny_with_data(tmp_path, seed=6, samples=4)
    model, processor = sgm_jax.load_model(directory)
    short = read_jsonl(data)
    # the same prompts, and a second batch whose long prompts would pad to a bucket of their own
    long = [dataclasses.replace(s, id=f"{s.id}-long", prompt=s.prompt + " and the picture" * 12) for s in short[:2]]
    samples = short[:2] + long
    lengths = [len(encode(s, processor)["input_ids"]) for s in samples]
    assert bucket_length(max(lengths[:2])) < bucket_length(max(lengths[2:]))
    jax.clear_caches()
    with count_compiles() as compiled:
        answers = generate_answers(
            model, processor, samples, cache_path=str(tmp_path / "answers.jsonl"), batch_size=2, progress=False
        )
    assert compiled.programs["decode"] == 1
    # padded further left than its own batch needs, a prompt is answered as it would be alone
    assert [answers[s.id] for s in short[:2]] == plain_answers(model, processor, short[:2], max_new_tokens=32)


def test_evaluate_compiles_its_generate_programs_while_the_weights_load(tmp_path, monkeypatch):
    directory, data = hf_tiny.save_tiny_with_data(tmp_path, seed=7, samples=6)
    model, _ = sgm_jax.load_model(directory)
    widths = sgm_jax.list_sites(model)
    site = next(name for name in widths if name.endswith("layers.0.mlp.up_proj"))
    sgm_jax.Intervention({site: np.full(widths[site], 0.5, np.float32)}).save(str(tmp_path / "iv.safetensors"))
    (tmp_path / "lexicon.txt").write_text("bad\nword\n")
    monkeypatch.setenv(compile_cache.ENV, compile_cache.OFF)
    command = ["--compile-cache", str(tmp_path / "xla"), "evaluate", "--model", directory, "--data", data]
    command += ["--intervention", str(tmp_path / "iv.safetensors"), "--judge", f"lexicon:{tmp_path / 'lexicon.txt'}"]
    warmed, loaded = _watch(monkeypatch, answers, "warm_answers"), _watch(monkeypatch, loading, "load_into")
    jax.clear_caches()
    try:
        with count_compiles() as compiled:
            cli.run(command + ["--max-new-tokens", "3", "--out", str(tmp_path / "eval"), "--quiet"])
    finally:
        os.environ[compile_cache.ENV] = compile_cache.OFF
        compile_cache.enable()
    # the plain and the intervened model's generate programs compiled once each, while the weights loaded, and the
    # run's own calls compiled nothing
    assert warmed[0]["started"] < loaded[0]["ended"]
    assert warmed[0]["compiled"].programs["decode"] == 2 and compiled.programs["decode"] == 2
