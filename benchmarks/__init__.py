"""Measurements behind BENCHMARKS.md, kept apart from the libraries (which never import this package).

`conversion`: conversion speed and peak memory, mask agreement across dtypes, and the measuring helpers
(`peak_rss`, `measure` in a fresh interpreter). `collection`: statistics collection speed, the CPU suite
against the Hugging Face torch baseline, the device suite at 1.3b-66b shapes, the cost of n-gram
counting, and the random layer sources those use. `scale`: the analyses and the store's commits on a
synthetic store of an OPT shape. The scripts `scripts/benchmark*.py` run them.
"""
