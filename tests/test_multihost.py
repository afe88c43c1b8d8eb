"""Jobs over two processes (gloo collectives on CPU, as two hosts): collection, scoring, evaluation and a sweep
write bitwise or exactly what one process writes, and a process lost mid-job leaves a store the rerun completes."""

import json
import os
import socket
import subprocess
import sys
from importlib.resources import files
from pathlib import Path

import numpy as np
import pytest

import sgm_jax
from sgm_jax.data.synthetic import Composition, write_dataset
from sgm_jax.runtime import distributed
from sgm_jax.runtime.errors import OptionError

ORGANISM = str(files("sgm_jax.bundled") / "organism")
JOB = str(Path(__file__).with_name("multihost_job.py"))
DATA = Composition(
    train_shape_scenes=16,
    train_word_scenes=8,
    test_shape_scenes=4,
    test_word_scenes=2,
    mcq_train=1,
    mcq_test=6,
    neutral_train=2,
    neutral_test=4,
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _job(out: Path, commands: list[list[str]], processes: int, cache: Path, die_after: int | None = None) -> list:
    """Run the commands as one job of `processes` processes, keeping compiled programs in `cache` (as a pod's hosts
    share one, and a rerun reads it); their completed processes, in process order."""
    out.mkdir(parents=True, exist_ok=True)
    script = out / "commands.json"
    script.write_text(json.dumps(commands))
    base = [sys.executable, JOB, str(script)]
    if processes == 1:
        launches = [base]
    else:
        job = ["--coordinator", f"127.0.0.1:{_free_port()}", "--num-processes", str(processes)]
        launches = [base + job + ["--process-id", str(i)] for i in range(processes)]
        if die_after is not None:
            launches[-1] += ["--die-after", str(die_after)]
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"} | {"SGM_JAX_COMPILE_CACHE": str(cache)}
    running = [
        subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) for cmd in launches
    ]
    return [(p, *p.communicate(timeout=300)) for p in running]


def _commands(data: dict, root: Path) -> list[list[str]]:
    store, scores = str(root / "store"), str(root / "scores.safetensors")
    lexicon = f"lexicon:{data['lexicon.txt']}"
    return [
        ["collect", "--model", ORGANISM, "--data", data["train.jsonl"], "--batch-size", "8", "--out", store, "--quiet"],
        ["score", "--store", store, "--out", scores, "--quiet"],
        ["evaluate", "--model", ORGANISM, "--data", data["test.jsonl"], "--mcq", data["mcq_test.jsonl"]]
        + ["--neutral", data["neutral.txt"], "--judge", lexicon, "--max-new-tokens", "6", "--batch-size", "4"]
        + ["--out", str(root / "eval"), "--quiet"],
        [
            "sweep",
            "--model",
            ORGANISM,
            "--scores",
            scores,
            "--data",
            data["test.jsonl"],
            "--mcq",
            data["mcq_test.jsonl"],
        ]
        + ["--neutral", data["neutral.txt"], "--judge", lexicon, "--threshold", "0.5", "0.6", "--strength", "1", "2"]
        + ["--max-new-tokens", "6", "--batch-size", "4", "--chunk-size", "2", "--out", str(root / "sweep"), "--quiet"],
    ]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_dataset(str(tmp_path_factory.mktemp("multihost") / "data"), seed=11, composition=DATA)


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("compiled")


@pytest.fixture(scope="module")
def single(data, cache, tmp_path_factory):
    root = tmp_path_factory.mktemp("single")
    ((done, out, err),) = _job(root, _commands(data, root), 1, cache)
    assert done.returncode == 0, err[-2000:]
    return root


def _store_files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted((root / "store").rglob("*"))
        if p.is_file() and p.name != ".lock"
    }


def test_two_processes_write_what_one_process_writes(data, single, cache, tmp_path):
    runs = _job(tmp_path, _commands(data, tmp_path), 2, cache)
    for done, _, err in runs:
        assert done.returncode == 0, err[-2000:]
    assert "samples x" in runs[0][1] and "samples x" not in runs[1][1]  # process 0 alone reports
    assert _store_files(tmp_path) == _store_files(single)  # the store, bit for bit
    two, one = (sgm_jax.load_scores(str(r / "scores.safetensors"))[0] for r in (tmp_path, single))
    assert two.keys() == one.keys()
    for site in one:  # each process scored half of every site's neurons
        np.testing.assert_array_equal(two[site], one[site])
    results = [json.loads((r / "eval" / "results.json").read_text())["settings"] for r in (tmp_path, single)]
    for setting in results[1]:
        for metric in ("harmful_rate", "over_refusal", "mcq_accuracy", "perplexity", "answer_perplexity"):
            assert results[0][setting][metric] == results[1][setting][metric], (setting, metric)
    columns = lambda r: [
        {k: v for k, v in json.loads(line).items()}
        for line in (r / "sweep" / "settings.jsonl").read_text().splitlines()[1:]
    ]
    assert sorted(columns(tmp_path), key=str) == sorted(columns(single), key=str)
    assert (tmp_path / "sweep" / "sweep.csv").read_text() == (single / "sweep" / "sweep.csv").read_text()


def test_a_process_lost_mid_job_leaves_a_store_the_rerun_completes(data, single, cache, tmp_path):
    collect = _commands(data, tmp_path)[:1]
    runs = _job(tmp_path, collect, 2, cache, die_after=1)
    assert runs[1][0].returncode == 3  # the lost host
    assert runs[0][0].returncode != 0 and "another process of the job stopped" in runs[0][2]
    chunks = list((tmp_path / "store" / "chunks").glob("*.safetensors"))
    assert 0 < len(chunks) < 4 and not (tmp_path / "store" / "responses").exists()
    for done, _, err in _job(tmp_path, collect, 2, cache):
        assert done.returncode == 0, err[-2000:]
    assert _store_files(tmp_path) == _store_files(single)


def test_a_job_needs_all_three_options(monkeypatch):
    for name in ("SGM_JAX_COORDINATOR", "SGM_JAX_NUM_PROCESSES", "SGM_JAX_PROCESS_ID"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(OptionError, match="needs all three of --coordinator"):
        distributed.initialize("127.0.0.1:1", None, None)
    with pytest.raises(OptionError, match=r"--process-id must lie in \[0, 2\)"):
        distributed.initialize("127.0.0.1:1", 2, 5)
    monkeypatch.setenv("SGM_JAX_NUM_PROCESSES", "two")
    with pytest.raises(OptionError, match="SGM_JAX_NUM_PROCESSES='two' is not a whole number"):
        distributed.initialize()
    assert distributed.cluster() == distributed.Cluster(0, 1)  # nothing was joined
