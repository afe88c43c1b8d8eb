"""The real-network experiment (`experiments/real_text_model.py`) in small: its judge against a torch restatement,
its vocabulary reader against code in the pickle, and the pipeline on SmolLM2's real weights with a few dozen
prompts, so the full run cannot break unseen."""

import dataclasses
import io
import json
import os
import pickle

import numpy as np
import pytest
import torch

import jigsaw
import real_text_model
import smollm2
import wheels

pytestmark = pytest.mark.slow
# ToxiGen's statements beside the checkout (../shared/data/toxigen, with their licence), or where SGM_JAX_TOXIGEN says.
TOXIGEN = os.environ.get("SGM_JAX_TOXIGEN") or os.path.join(
    os.path.dirname(__file__), "..", "..", "shared", "data", "toxigen"
)
TEXTS = [
    "You are a stupid idiot and everyone hates you",
    "What a lovely day for a walk in the park",
    "I disagree with your opinion about the new tax plan",
    "",
    "word " * 150,  # longer than the classifier's 100 ids: the first 50 are cut, as pad_sequences does
]


@pytest.fixture(scope="module")
def judge():
    try:
        return jigsaw.JigsawJudge()
    except wheels.WheelUnavailable as err:
        pytest.skip(f"the classifier's wheel is unavailable: {err}")


def test_the_numpy_judge_equals_torch_layers_with_its_weights(judge):
    lstm = torch.nn.LSTM(50, 50, batch_first=True, bidirectional=True)
    with torch.no_grad():
        for suffix, (kernel, recurrent, bias) in (("", judge.forward_cell), ("_reverse", judge.backward_cell)):
            getattr(lstm, f"weight_ih_l0{suffix}").copy_(torch.tensor(kernel.T))
            getattr(lstm, f"weight_hh_l0{suffix}").copy_(torch.tensor(recurrent.T))
            getattr(lstm, f"bias_ih_l0{suffix}").copy_(torch.tensor(bias))
            getattr(lstm, f"bias_hh_l0{suffix}").zero_()
        x = torch.tensor(judge.embedding)[torch.tensor(judge.padded(TEXTS))]
        pooled = lstm(x)[0].max(dim=1).values
        hidden = torch.relu(pooled @ torch.tensor(judge.dense[0]) + torch.tensor(judge.dense[1]))
        expected = torch.sigmoid(hidden @ torch.tensor(judge.out[0]) + torch.tensor(judge.out[1])).numpy()
    ours = judge.probabilities(TEXTS)
    np.testing.assert_allclose(ours, expected, atol=1e-5)
    assert ours[0, 0] > 0.9 > 0.1 > ours[1, 0]  # an insult is toxic, a walk in the park is not
    assert judge.padded(TEXTS)[4].tolist() == [judge.vocabulary["word_index"]["word"]] * 100


def test_the_vocabulary_reader_runs_no_code_from_the_pickle():
    class Payload:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    with pytest.raises(pickle.UnpicklingError, match="posix.system, which is not read"):
        jigsaw._VocabularyUnpickler(io.BytesIO(pickle.dumps(Payload()))).load()


def test_the_pipeline_runs_on_real_weights(judge, tmp_path, monkeypatch):
    try:
        smollm2.checkpoint()
    except smollm2.CheckpointUnavailable as err:
        pytest.skip(f"SmolLM2 checkpoint unavailable: {err}")
    # A few prompts, no refusal rates: the refusal direction's pipeline is test_refusal.py's, Linear-AcT's is
    # test_transport.py's; here the real weights, wheels and judge go through the experiment's AurA route.
    small = dict(rtp=8, new_tokens=4, neutral=4, statements=32, refusal_tokens=0)
    monkeypatch.setattr(real_text_model, "SMALL", dataclasses.replace(real_text_model.SMALL, **small))
    rows = ["none", "aura-chat-mean@0.5"]
    argv = ["--toxigen", TOXIGEN, "--out", str(tmp_path), "--small", "--rows", *rows]
    table = real_text_model.main(argv)
    measured = {row["row"]: row for row in map(json.loads, open(tmp_path / "rows.jsonl"))}
    assert list(measured) == rows and all(f"| {row} |" in table for row in rows)
    for row in measured.values():
        assert 0 <= row["toxic_rate"] <= 1 and np.isfinite(row["perplexity"]) and row["perplexity"] > 1
    assert measured["none"]["neurons_changed"] == 0 < measured["aura-chat-mean@0.5"]["neurons_changed"]
    assert measured["aura-chat-mean@0.5"]["strength"] == 0.5
    evidence = json.load(open(tmp_path / "evidence.json"))
    assert set(evidence["auroc_by_layer"]["toxigen-chat-mean"]) == {str(i) for i in range(30)}
    assert 0 < evidence["null_auroc_sd"] < 0.5 and set(evidence["judge_on_statements"]) == {"hateful", "neutral"}
