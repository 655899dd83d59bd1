"""The main job: collect statistics of one or more models over a corpus, then run every analysis.

With no arguments it studies the shipped twins (`opt_jax.shipped`) on the running Python's standard
library. Each step resumes: a killed study rerun with the same arguments continues where it stopped.
`example_contexts` shows where the reported neurons fire: their strongest example activations.
"""

from __future__ import annotations

import functools
import os

from analyses import report
from analyses.collection import collect_runs, open_stats
from analyses.tokens import TokenStrings, context_span
from opt_jax import checkpoint as ckpt
from opt_jax import lock
from opt_jax import shipped, stdlib_corpus
from opt_jax.errors import AnalysisError, OptJaxError


def expand_models(models, names=None) -> tuple[list[str], list[str]]:
    """(names, checkpoint directories) of models given as `DIR` or `NAME=DIR`; a training run directory
    (`scripts/train.py --out`, with `step-N/` snapshots) stands for its snapshots, named `NAME-step-N`,
    ordered by step."""
    names, dirs = report.split_labels(models, names)
    out_names, out_dirs = [], []
    for name, directory in zip(names, dirs):
        snapshots = [] if os.path.isfile(os.path.join(directory, ckpt.MANIFEST)) else _snapshots(directory)
        out_names += [f"{name}-step-{step}" for step, _ in snapshots] or [name]
        out_dirs += [path for _, path in snapshots] or [directory]
    return out_names, out_dirs


def _snapshots(directory: str) -> list[tuple[int, str]]:
    from opt_jax.train.snapshots import list_snapshots  # orbax and the training code only for a run directory

    return list_snapshots(directory)


def corpus_domains(corpus) -> tuple[list[str], dict[str, list[str]]]:
    """(every path, {domain: its paths}) of corpus entries given as `PATH` or `DOMAIN=PATH` (a domain may repeat)."""
    paths, domains = [], {}
    for value in corpus:
        label, path = report.label_of(value)
        paths.append(path)
        if label is not None:
            domains.setdefault(label, []).append(path)
    if len(domains) == 1:
        raise AnalysisError(f"one labelled corpus ({next(iter(domains))}): label two or more to compare domains")
    return paths, domains


@lock.writes("out_dir")
def run_study(out_dir: str, models=None, corpus=None, names=None, seq_len: int = 128, batch_size: int = 16,
              max_tokens: int | None = 200_000, ngram_orders=(2, 3), analyses=report.ANALYSES,
              overwrite: bool = False, verbose: bool = True, compare_domains: bool = True, atlas: bool = True,
              causal: bool = True, causal_tokens: int | None = 50_000, device_memory_gb: float | None = None,
              collect_options: dict | None = None) -> dict:
    """Collect into OUT/stats/<name> for each model, analyze them together into OUT/report, and (with `atlas`)
    write the neuron atlas of the models whose statistics hold example activations into OUT/atlas
    (`analyses.neurons.atlas`); returns the report.

    A model is a converted checkpoint, `NAME=DIR`, or a training run directory (its snapshots, in step
    order: see `expand_models`); `names` name the unlabelled ones. Corpus entries labelled `DOMAIN=PATH`
    (two domains or more) are also collected per domain, OUT/stats/<name>-domain-<domain> (no n-grams),
    and the report compares each model's positional neurons across them (`analyses.domains`). With the
    default corpus the domains are the standard library's docstrings ("prose") and its code without them
    ("code"; `opt_jax.stdlib_corpus.write_domains`). `compare_domains=False` collects no domain.

    With n-grams, each model is collected twice: OUT/stats/<name>-tokens without them, then
    OUT/stats/<name> counting n-grams for the neurons that <= 50 tokens cover in the first pass
    (exact for everything the analyses report; see README "N-grams").

    Each collection holds as many token layers per run as the device's memory allows (`device_memory_gb`: plan
    for that much instead); when they do not all fit at once (OPT-66b), its runs go to OUT/stats/<dir>-runs/ and
    are joined into OUT/stats/<dir>, which the report and the atlas read as one model
    (`analyses.collection.runs`). `collect_options` are more `collect` flags for every collection (e.g.
    offload, group_size, chunk_batches, dtype, flush_every_s).

    With `causal`, each model's dead neurons, token detectors and positional neurons (the latter two with
    matched random controls) are zero-ablated on `causal_tokens` tokens of held-out text (the corpus's
    windows after those collected) into OUT/ablation/<name> (`analyses.interventions.causal`), and the report
    checks the causal claims on them.
    """
    if not models:
        models = [shipped.path(name) for name in shipped.NAMES]
        names = names or list(shipped.NAMES)
    names, models = expand_models(models, names)
    default = not corpus
    if default:
        corpus = [stdlib_corpus.write_jsonl(os.path.join(out_dir, "corpus", "stdlib.jsonl"))]
    corpus, domains = corpus_domains(corpus)
    if default and compare_domains:  # the library's docstrings against its code
        domains = {d: [p] for d, p in stdlib_corpus.write_domains(os.path.join(out_dir, "corpus")).items()}
    if not compare_domains:
        domains = {}
    stats, by_domain = [], {}
    for model, name in zip(models, names):
        flags = dict(seq_len=seq_len, batch_size=batch_size, max_tokens=max_tokens, full_length_only=True,
                     overwrite=overwrite, verbose=verbose) | (collect_options or {})
        collect = functools.partial(collect_runs, device_memory_gb=device_memory_gb)
        if verbose:
            print(f"collecting {name} ({model})", flush=True)
        where = os.path.join(out_dir, "stats", name)
        if ngram_orders:  # two passes: n-grams only for the neurons few tokens cover in the first
            first = collect(model, corpus, where + "-tokens", **(flags | {"examples": 0}))
            stats.append(collect(model, corpus, where, ngram_orders=tuple(ngram_orders),
                                 ngram_candidates_from=first, **flags))
        else:
            stats.append(collect(model, corpus, where, **flags))
        for domain, paths in domains.items():
            if verbose:
                print(f"collecting {name} on the domain {domain}", flush=True)
            by_domain.setdefault(name, {})[domain] = collect(model, paths, f"{where}-domain-{domain}",
                                                             **(flags | {"examples": 0}))
    ablations = {}
    if causal:
        from analyses.interventions.causal import causal_checks

        for model, name, where in zip(models, names, stats):
            if verbose:
                print(f"causal checks of {name}: ablations on held-out text", flush=True)
            directory = os.path.join(out_dir, "ablation", name)
            if causal_checks(model, where, corpus, directory, causal_tokens, batch_size, verbose=verbose):
                ablations[name] = directory
    result = report.analyze(stats, os.path.join(out_dir, "report"), analyses=analyses, names=names,
                            verbose=verbose, domains=by_domain or None, causal=ablations or None)
    with_examples = [(name, path, model) for name, path, model in zip(names, stats, models)
                     if open_stats(path).examples_per_neuron]
    if atlas and with_examples:
        from analyses.neurons.atlas import build_atlas

        build_atlas([path for _, path, _ in with_examples], os.path.join(out_dir, "atlas"),
                    names=[name for name, _, _ in with_examples], model_dirs=[m for _, _, m in with_examples],
                    verbose=verbose)
    return result


def example_contexts(result: dict, per_neuron: int = 3, before: int = 8, after: int = 3) -> str:
    """For each model of a report, its token detectors and its three most positional neurons, each with its
    `per_neuron` strongest example contexts: the firing token in [[ ]], a few tokens either side."""
    lines = []
    for name, m in result["models"].items():
        stats = open_stats(m["stats"])
        picks = [(d["layer"], d["neuron"], "token detector") for d in m.get("token_detectors", [])]
        picks += [(p["layer"], p["neuron"], f"positional, I = {p['mi']:.3f}")
                  for p in sorted(m.get("positional", []), key=lambda p: -p["mi"])[:3]]
        if not picks or not stats.examples_per_neuron:
            continue
        try:
            strings = TokenStrings(m["model"])
        except OptJaxError as e:
            lines.append(f"{name}: no example contexts ({e})")
            continue
        lines.append(f"{name}: strongest example contexts ([[the token it fires on]])")
        for layer, neuron, what in picks:
            lines.append(f"  layer {layer} neuron {neuron} ({what}):")
            for e in stats.examples(layer, neuron, "top")[:per_neuron]:
                start, stop = context_span(e.position, len(e.tokens), before, after)
                left, token, right = (strings.join([piece])[0] for piece in (
                    e.tokens[start:e.position], e.tokens[e.position:e.position + 1], e.tokens[e.position + 1:stop]))
                text = f"{left}[[{token}]]{right}".replace("\n", "\\n")
                lines.append(f"    {e.value:7.3f}  window {e.window}, position {e.position}: {text}")
    return "\n".join(lines)
