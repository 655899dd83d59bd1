"""The data order: the corpus windows, epoch after epoch, each block of `shuffle_windows` windows permuted by
a generator seeded with (seed, epoch, block); a cursor (epoch, window) says where a resumed run picks up."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import numpy as np

from opt_jax.corpus import Corpus, batches
from opt_jax.train.options import TrainOptions


def training_batches(corpus: Corpus, options: TrainOptions, pad_id: int, cursor: dict
                     ) -> Iterator[tuple[np.ndarray, np.ndarray, dict]]:
    """(ids [batch, seq], mask [batch, seq], cursor after the batch) from cursor on, forever."""
    windows = _cycled_windows(corpus, options, cursor)
    while True:
        group = list(itertools.islice(windows, options.batch_size))
        ids, mask = next(batches([window for window, _ in group], options.batch_size, options.seq_len, pad_id))
        yield ids, mask, group[-1][1]


def _cycled_windows(corpus: Corpus, options: TrainOptions, cursor: dict) -> Iterator[tuple[np.ndarray, dict]]:
    """Each window from cursor on, with the cursor after it; epoch after epoch."""
    epoch, start = cursor["epoch"], cursor["window"]
    while True:
        for index, window in enumerate(epoch_windows(corpus, options, epoch, start), start=start):
            yield window, {"epoch": epoch, "window": index + 1}
        epoch, start = epoch + 1, 0


def epoch_windows(corpus: Corpus, options: TrainOptions, epoch: int, start: int = 0) -> Iterator[np.ndarray]:
    """The windows of one epoch from index start on: corpus order, each block of shuffle_windows permuted."""
    block = options.shuffle_windows
    if block <= 1:
        return corpus.windows(skip=start)
    first = start - start % block
    shuffled = _shuffled_blocks(corpus.windows(skip=first), block, (options.seed, epoch), first // block)
    return itertools.islice(shuffled, start - first, None)


def _shuffled_blocks(windows: Iterator[np.ndarray], block: int, seed: tuple[int, int], first_block: int
                     ) -> Iterator[np.ndarray]:
    """windows with block after block permuted by a generator seeded with (*seed, block index)."""
    for index in itertools.count(first_block):
        group = list(itertools.islice(windows, block))
        if not group:
            return
        yield from (group[i] for i in np.random.default_rng([*seed, index]).permutation(len(group)))
