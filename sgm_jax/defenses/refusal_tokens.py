"""SafeCoDe's refusal vocabulary for one tokenizer: the refusal phrases, their tokens, and per-token text facts.

SafeCoDe's decoder reads text while it decodes (is the prefix two words yet? does it hold a `|`?). To keep
that inside the jitted loop, every token's decoded piece is reduced once, on the host, to a few booleans and
small integers that a word-boundary automaton consumes (`PieceFacts`); the tables are arrays indexed by token.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

# safecode/prompt.py `REFUSAL_PREFIXES` (franciscoliu/SafeCoDe), duplicates included: the unsafe branch
# shortlists phrases from this list, so a repeated phrase takes two places there, as in the original.
REFUSAL_PREFIXES = (
    "I'm sorry",
    "I am sorry",
    "I'm an",
    "I'm just",
    "Sorry",
    "I apologize",
    "As an",
    "As an AI",
    "As a language model",
    "As an Assistant",
    "I cannot",
    "I do not",
    "It is not</s>",
    "It is not appropriate",
    "I'm unable to",
    "I am unable to",
    "I am not allowed to",
    "I am an AI language model",
    "It is not</s>",
    "I\u2019m unable to",
    "I am unable to",
    "I am not allowed to",
    "I am an AI language model",
    "Hello",
    "I",
    "Sorry",
    "cannot",
    "apologize",
    "inappropriate",
)
# Phrases the unsafe branch prefers among its shortlist (lowercased containment), as the official code.
PREFERRED_KEYWORDS = ("sorry", "apologize", "unable", "cannot", "can't", "not allowed", "not able to")
QUOTES = frozenset("\"'\u201c\u201d\u2018\u2019`\u00b4")
CORRUPT_MARKS = ("|", "$", "MS")


@dataclasses.dataclass(frozen=True)
class PieceFacts:
    """Per token (arrays `[vocab]`): what its decoded piece means for SafeCoDe's text rules.

    The first word-run of a piece is its first stretch of non-space characters; `run_len` is its length
    capped at 2 (the early stop asks for a first word of at least two characters).
    """

    empty: np.ndarray  # the piece is empty or whitespace only
    lead_space: np.ndarray  # it starts with whitespace
    run_len: np.ndarray  # int32: length of its first word-run, at most 2
    run_upper: np.ndarray  # the first word-run starts with an uppercase letter
    space_after_run: np.ndarray  # whitespace follows the first word-run inside the piece
    second_run: np.ndarray  # a second word-run starts inside the piece
    quote: np.ndarray  # the piece is quote characters only
    corrupt: np.ndarray  # it holds "|", "$" or "MS"
    ends_m: np.ndarray  # it ends with "M" (with a next piece starting "S", the prefix holds "MS")
    starts_s: np.ndarray


@dataclasses.dataclass(frozen=True)
class RefusalVocabulary:
    """The refusal set R, the phrases the unsafe branch can force, and the per-token piece facts."""

    refusal: np.ndarray  # bool [vocab]: token ids of R
    phrase_counts: np.ndarray  # float32 [phrases, vocab]: how often each token occurs in each phrase
    phrase_tokens: np.ndarray  # int32 [phrases, longest]: each phrase's tokens, padded with 0
    phrase_lengths: np.ndarray  # int32 [phrases]
    preferred: np.ndarray  # bool [phrases]
    phrases: tuple[str, ...]
    dropped: tuple[str, ...]  # phrases the tokenizer cannot write (they hold its unknown token)
    pieces: PieceFacts


def _pieces(tokenizer, vocab: int) -> list[str]:
    """Each token's text as it reads after another token: decode([anchor, t]) minus decode([anchor]), so a
    leading space the tokenizer marks (SentencePiece's "▁", byte-level "Ġ", a word-level join) is kept."""
    anchor = tokenizer.encode("a", add_special_tokens=False)[:1] or [0]
    head = tokenizer.decode(anchor, skip_special_tokens=True)
    known = min(vocab, len(tokenizer))  # a model may pad its vocabulary past the tokenizer's: those never decode
    pairs = tokenizer.batch_decode([anchor + [t] for t in range(known)], skip_special_tokens=True)
    return [p[len(head) :] if p.startswith(head) else p for p in pairs] + [""] * (vocab - known)


def _facts(pieces: list[str]) -> PieceFacts:
    n = len(pieces)
    arrays = {f.name: np.zeros(n, np.int32 if f.name == "run_len" else bool) for f in dataclasses.fields(PieceFacts)}
    for i, piece in enumerate(pieces):
        words = piece.split()
        arrays["empty"][i] = not words
        arrays["lead_space"][i] = piece[:1].isspace()
        arrays["quote"][i] = bool(piece.strip()) and set(piece.strip()) <= QUOTES
        arrays["corrupt"][i] = any(mark in piece for mark in CORRUPT_MARKS)
        arrays["ends_m"][i] = piece.endswith("M")
        arrays["starts_s"][i] = piece.startswith("S")
        if words:
            first = words[0]
            arrays["run_len"][i] = min(len(first), 2)
            arrays["run_upper"][i] = first[0].isupper()
            rest = piece.lstrip()[len(first) :]
            arrays["space_after_run"][i] = rest[:1].isspace()
            arrays["second_run"][i] = len(words) > 1
    return PieceFacts(**arrays)


@functools.lru_cache(maxsize=8)
def _cached(tokenizer, vocab: int) -> RefusalVocabulary:
    unk = tokenizer.unk_token_id
    encoded = [tokenizer.encode(p, add_special_tokens=False) for p in REFUSAL_PREFIXES]
    kept = [(p, ids) for p, ids in zip(REFUSAL_PREFIXES, encoded) if ids and (unk is None or unk not in ids)]
    dropped = tuple(p for p, ids in zip(REFUSAL_PREFIXES, encoded) if (p, ids) not in kept)
    refusal = np.zeros(vocab, bool)
    longest = max((len(ids) for _, ids in kept), default=1)
    counts = np.zeros((len(kept), vocab), np.float32)
    tokens = np.zeros((len(kept), longest), np.int32)
    for row, (_, ids) in enumerate(kept):
        refusal[ids] = True
        np.add.at(counts[row], ids, 1.0)
        tokens[row, : len(ids)] = ids
    return RefusalVocabulary(
        refusal=refusal,
        phrase_counts=counts,
        phrase_tokens=tokens,
        phrase_lengths=np.asarray([len(ids) for _, ids in kept], np.int32),
        preferred=np.asarray([any(k in p.lower() for k in PREFERRED_KEYWORDS) for p, _ in kept], bool),
        phrases=tuple(p for p, _ in kept),
        dropped=dropped,
        pieces=_facts(_pieces(tokenizer, vocab)),
    )


def refusal_vocabulary(tokenizer, vocab_size: int) -> RefusalVocabulary:
    """R and the phrase tables for `tokenizer` over the model's `vocab_size` logits (the official recipe: each
    phrase tokenised without special tokens, R the union of their ids).

    A phrase that holds the tokenizer's unknown token is left out of both (a word-level vocabulary that lacks
    "I'm" would otherwise put `<unk>` in R and force it); byte-level and SentencePiece tokenizers have no
    such phrase, so on real checkpoints nothing is left out. Cached per tokenizer.
    """
    return _cached(tokenizer, int(vocab_size))
