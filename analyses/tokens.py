"""Readable strings for token ids, from the tokenizer stored beside the model the statistics came from."""

from __future__ import annotations

import os

import numpy as np

from opt_jax.errors import MissingError, TokenizerError


class TokenStrings:
    """Decodes single token ids (and id sequences) with the model directory's tokenizer, and encodes texts."""

    def __init__(self, model_dir: str):
        from transformers import AutoTokenizer

        if not model_dir or not os.path.isdir(model_dir):
            raise MissingError(f"{model_dir}: model directory not found (needed for its tokenizer and "
                                    "weights; pass --model to point at it)")
        try:
            self._tokenizer = AutoTokenizer.from_pretrained(model_dir)
        except (OSError, ValueError) as e:
            raise TokenizerError(f"{model_dir}: cannot load the tokenizer ({e})") from None
        self._size = len(self._tokenizer)

    def encode(self, text: str) -> list[int]:
        """The token ids of a text, as collection tokenizes a document (no special tokens)."""
        return list(self._tokenizer(text, add_special_tokens=False)["input_ids"])

    def __call__(self, ids) -> list[str]:
        """The decoded string of each token id; ids the tokenizer lacks (embedding padding) as '<id N>'."""
        ids = np.asarray(ids, np.int64).reshape(-1)  # [k]
        known = [[int(i)] for i in ids if i < self._size]
        decoded = iter(self._tokenizer.batch_decode(known, clean_up_tokenization_spaces=False))
        return [next(decoded) if i < self._size else f"<id {int(i)}>" for i in ids]

    def join(self, sequences) -> list[str]:
        """One string per id sequence (e.g. a trigram), decoded together; a fast tokenizer's decodes all at once
        (its backend's `decode_batch`: the same strings, without transformers' per-call overhead)."""
        sequences = np.asarray(sequences, np.int64)  # [m, c]
        known = (sequences.tolist() if (sequences < self._size).all() else
                 [[int(i) for i in seq if i < self._size] for seq in sequences])
        backend = getattr(self._tokenizer, "backend_tokenizer", None)
        if backend is not None:
            return backend.decode_batch(known, skip_special_tokens=False)
        return [self._tokenizer.decode(seq, clean_up_tokenization_spaces=False) for seq in known]


def context_span(position, length, before: int, after: int):
    """[start, stop) of the context shown around a firing position of a window of `length` tokens: up to
    `before` tokens before it (never BOS, position 0) and `after` after it (arrays broadcast)."""
    start = np.maximum(1, np.asarray(position) - before)
    stop = np.minimum(np.asarray(length), np.asarray(position) + 1 + after)
    return start, stop
