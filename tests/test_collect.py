"""Response stores: collected in chunks, resumed after an interruption with identical arrays, checked on reuse."""

import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import hf_tiny
import sgm_jax
import sgm_jax.responses.collect
from sgm_jax.data import read_jsonl
from sgm_jax.data.encode import encode
from sgm_jax.decoding.batching import collate
from sgm_jax.responses.collect import collect_to_store
from sgm_jax.responses.store import ResponseStore, StoreError

SITES = [
    "model.language_model.layers.*.mlp.up_proj",
    "model.language_model.layers.1.mlp.down_proj:in",
    "model.vision_tower.encoder.layers.0.mlp.fc1",
    "model.multi_modal_projector",
]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    directory, data = hf_tiny.save_tiny_with_data(tmp_path_factory.mktemp("collect"), seed=3, samples=23)
    model, processor = sgm_jax.load_model(directory)
    return directory, data, model, processor


def _collect(setup, out, **kwargs):
    _, data, model, processor = setup
    options = dict(sites=SITES, batch_size=4, progress=False)
    options.update(kwargs)
    return collect_to_store(model, processor, read_jsonl(data), str(out), **options)


@pytest.fixture(scope="module")
def reference_store(setup, tmp_path_factory):
    return _collect(setup, tmp_path_factory.mktemp("ref") / "store")


def test_store_holds_every_site_in_sample_order(setup, reference_store):
    _, data, model, processor = setup
    samples = read_jsonl(data)
    assert reference_store.complete and reference_store.sample_ids == [s.id for s in samples]
    assert reference_store.labels == [s.label for s in samples]
    assert not os.path.exists(os.path.join(reference_store.directory, "chunks"))
    one_by_one = sgm_jax.collect_responses(model, [collate([encode(s, processor)]) for s in samples], sites=SITES)
    for site, width in reference_store.sites.items():
        stored = reference_store.load(site)
        assert stored.shape == (23, width)
        np.testing.assert_allclose(stored, one_by_one[site], atol=2e-5, err_msg=site)


def test_interrupted_collection_resumes_to_identical_arrays(setup, reference_store, tmp_path, monkeypatch):
    calls = []
    real = sgm_jax.responses.collect.pooled_batch

    def flaky(*args, **kwargs):
        if len(calls) == 3:
            raise KeyboardInterrupt
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(sgm_jax.responses.collect, "pooled_batch", flaky)
    with pytest.raises(KeyboardInterrupt):
        _collect(setup, tmp_path / "store")
    store = ResponseStore(str(tmp_path / "store"))
    assert not store.complete and store.intact_batches() == {0, 1, 2}
    (tmp_path / "store" / "chunks" / ".tmp-half-written000003.safetensors").write_bytes(b"partial")
    with pytest.raises(StoreError, match="incomplete"):
        store.load(SITES[-1])

    calls.clear()
    monkeypatch.setattr(sgm_jax.responses.collect, "pooled_batch", lambda *a, **k: calls.append(1) or real(*a, **k))
    resumed = _collect(setup, tmp_path / "store")
    assert len(calls) == 3  # 6 planned batches of 4 (the last has 3), 3 already done
    for site in reference_store.sites:
        np.testing.assert_array_equal(resumed.load(site), reference_store.load(site), err_msg=site)


def test_killed_cli_collection_resumes_to_identical_arrays(setup, tmp_path):
    """kill -9 in the middle of `sgm-jax collect`, then the same command finishes the job."""
    directory, data, model, processor = setup
    big = hf_tiny.write_dataset(str(tmp_path / "data"), 60, seed=5)
    out = tmp_path / "store"
    command = [
        sys.executable,
        "-m",
        "sgm_jax.cli",
        "collect",
        "--model",
        directory,
        "--data",
        big,
        "--sites",
        "model.language_model.layers.*.mlp.up_proj",
        "--batch-size",
        "1",
        "--out",
        str(out),
        "--quiet",
    ]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    chunks = out / "chunks"
    deadline = time.time() + 120
    while time.time() < deadline and process.poll() is None and len(os.listdir(chunks) if chunks.exists() else []) < 3:
        time.sleep(0.005)
    assert process.poll() is None, process.stderr.read().decode()
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not ResponseStore(str(out)).complete, "the run finished before it could be killed"
    subprocess.run(command, check=True, capture_output=True)
    a = ResponseStore(str(out))
    b = collect_to_store(
        model, processor, read_jsonl(big), str(tmp_path / "again"), sites=command[9:10], batch_size=1, progress=False
    )
    for site in a.sites:
        np.testing.assert_array_equal(a.load(site), b.load(site), err_msg=site)


def test_resuming_with_other_settings_names_what_differs(setup, reference_store, tmp_path):
    out = tmp_path / "store"
    shutil.copytree(reference_store.directory, out)
    with pytest.raises(StoreError, match=r"pooling: store has 'mean', asked for 'max'"):
        _collect(setup, out, pooling="max")
    with pytest.raises(StoreError, match=r"sites: store has"):
        _collect(setup, out, sites=SITES[:1])
    directory, data, _, processor = setup
    other_model, _ = sgm_jax.load_model(hf_tiny.save_llava(str(tmp_path / "other"), hf_tiny.llava_config(), seed=4))
    with pytest.raises(StoreError, match=r"model_fingerprint: store has"):
        collect_to_store(other_model, processor, read_jsonl(data), str(out), sites=SITES, batch_size=4, progress=False)
    other_data = hf_tiny.write_dataset(str(tmp_path / "data"), 23, seed=9)
    with pytest.raises(StoreError, match=r"dataset_hash: store has"):
        collect_to_store(
            setup[2], processor, read_jsonl(other_data), str(out), sites=SITES, batch_size=4, progress=False
        )
    store = ResponseStore(str(out))
    with pytest.raises(StoreError, match=r"tokens: store has 'all', asked for 'text'"):
        store.check(tokens="text")
    with pytest.raises(StoreError, match="no site 'lm_head'"):
        store.load("lm_head")
    with pytest.raises(StoreError, match="not a response store"):
        ResponseStore(str(tmp_path))
