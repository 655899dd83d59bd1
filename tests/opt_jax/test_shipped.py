"""The trained twins that ship in the package: present, small, trained, and one without positions."""

import os

import numpy as np
import pytest

import opt_jax
from opt_jax import shipped
from opt_jax.corpus import Corpus
from opt_jax.stdlib_corpus import write_jsonl


def directory_bytes(path):
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


def test_the_twins_fit_the_budget_and_differ_only_in_positions():
    total = sum(directory_bytes(shipped.path(name)) for name in shipped.NAMES)
    assert total <= 20 * 2 ** 20
    with_positions, without = (opt_jax.load(shipped.path(name)) for name in shipped.NAMES)
    assert "positions" in with_positions.params["embed"] and "positions" not in without.params["embed"]
    assert without.config.positional_embeddings is False
    assert with_positions.config.replace(positional_embeddings=False) == without.config
    with pytest.raises(ValueError, match="no shipped model"):
        shipped.path("opt-66b")


@pytest.mark.parametrize("name", shipped.NAMES)
def test_the_twins_are_trained(name, tmp_path):
    """On standard-library windows, next-token loss well below the best context-free guess: the windows'
    own unigram distribution (fit on those very windows), and far below uniform (ln 4096 = 8.3 nats)."""
    from transformers import AutoTokenizer

    model = opt_jax.load(shipped.path(name))
    corpus = Corpus([write_jsonl(str(tmp_path / "stdlib.jsonl"))], AutoTokenizer.from_pretrained(shipped.path(name)),
                    128, model.config.bos_token_id, full_length_only=True)
    windows = np.stack([w for _, w in zip(range(64), corpus.windows())])  # [b, s]
    targets = windows[:, 1:]  # [b, s - 1]
    logits = np.asarray(model.forward(windows).logits, np.float64)[:, :-1]  # [b, s - 1, v]
    logits -= logits.max(axis=-1, keepdims=True)
    log_probs = logits - np.log(np.exp(logits).sum(axis=-1, keepdims=True))  # [b, s - 1, v]
    loss = -np.take_along_axis(log_probs, targets[..., None], axis=-1).mean()
    unigram = np.bincount(targets.ravel(), minlength=model.config.vocab_size) / targets.size  # [v]
    context_free = -np.log(unigram[targets]).mean()
    assert loss < context_free - 0.5, f"{name}: loss {loss:.2f} vs unigram {context_free:.2f}"
