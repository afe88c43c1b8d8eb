"""A checkpoint whose only tokenizer file is SentencePiece's `tokenizer.model` (the Llama-2 / Vicuna repos) loads:
transformers converts it with sentencepiece and protobuf, runtime dependencies of sgm-jax for that reason."""

import io
import json

import sentencepiece

from sgm_jax.weights.loading import load_processor

CORPUS = ["a red square above a blue circle", "describe the picture please", "what is in this image"]


def test_a_sentencepiece_only_tokenizer_loads_and_encodes_as_sentencepiece_does(tmp_path):
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS * 20), model_writer=model, vocab_size=40, model_type="bpe", minloglevel=2
    )
    (tmp_path / "tokenizer.model").write_bytes(model.getvalue())
    (tmp_path / "tokenizer_config.json").write_text(
        json.dumps({"tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"})
    )
    tokenizer = load_processor(str(tmp_path))
    text = "a red square in this picture"
    ids = tokenizer(text, add_special_tokens=False).input_ids
    assert ids == sentencepiece.SentencePieceProcessor(model_proto=model.getvalue()).encode(text)
    assert tokenizer.decode(ids) == text
