"""The main job: collect statistics of one or more models over a corpus, then run every analysis.

With no arguments it studies the shipped twins (`opt_jax.shipped`) on the running Python's standard
library. Each step resumes: a killed study rerun with the same arguments continues where it stopped.
"""

from __future__ import annotations

import os

from analyses import report
from analyses.collection import collect
from opt_jax import shipped, stdlib_corpus


def run_study(out_dir: str, models=None, corpus=None, names=None, seq_len: int = 128, batch_size: int = 16,
              max_tokens: int | None = 200_000, ngram_orders=(2, 3), analyses=report.ANALYSES,
              overwrite: bool = False, verbose: bool = True) -> dict:
    """Collect into OUT/stats/<name> for each model, then analyze them together into OUT/report.

    With n-grams, each model is collected twice: OUT/stats/<name>-tokens without them, then
    OUT/stats/<name> counting n-grams for the neurons that <= 50 tokens cover in the first pass
    (exact for everything the analyses report; see README "N-grams").
    """
    if not models:
        models = [shipped.path(name) for name in shipped.NAMES]
        names = names or list(shipped.NAMES)
    names = list(names) if names else [os.path.basename(os.path.normpath(m)) for m in models]
    if not corpus:
        corpus = [stdlib_corpus.write_jsonl(os.path.join(out_dir, "corpus", "stdlib.jsonl"))]
    stats = []
    for model, name in zip(models, names):
        flags = dict(seq_len=seq_len, batch_size=batch_size, max_tokens=max_tokens, full_length_only=True,
                     overwrite=overwrite, verbose=verbose)
        if verbose:
            print(f"collecting {name} ({model})", flush=True)
        where = os.path.join(out_dir, "stats", name)
        if ngram_orders:  # two passes: n-grams only for the neurons few tokens cover in the first
            first = collect(model, corpus, where + "-tokens", **flags)
            stats.append(collect(model, corpus, where, ngram_orders=tuple(ngram_orders),
                                 ngram_candidates_from=first, **flags))
        else:
            stats.append(collect(model, corpus, where, **flags))
    return report.analyze(stats, os.path.join(out_dir, "report"), analyses=analyses, names=names, verbose=verbose)
