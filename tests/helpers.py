"""What several test files share: the repository root, the offline environment, several simulated JAX devices
on the CPU, running a script as a user runs it, a fake accelerator reporting its memory, and a small disk to fill."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def offline_env(**extra) -> dict:
    """The current environment, offline from the hub, plus `extra`."""
    return dict(os.environ, HF_HUB_OFFLINE="1", **extra)


def devices_env(devices: int = 1, **extra) -> dict:
    """The offline environment with JAX on `devices` simulated CPU devices."""
    return offline_env(JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", **extra)


def run_script(*args, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """`python <args>` from the repository root (offline unless `env` says otherwise); output captured as text."""
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True,
                          env=offline_env() if env is None else env, timeout=timeout)


def assert_same_stats(a, b, examples: int = 16) -> None:
    """Two statistics stores (`analyses.open_stats`) hold identical counts (value histograms and their bins too),
    example sets (the quantile set too when they hold one) and windows (k = `examples`, some filled) and n-gram
    tables (non-empty), array by array and bit for bit."""
    import numpy as np

    from analyses.collection.store import ARRAY_NAMES, QUANTILE, example_layouts, example_slots

    for name in ARRAY_NAMES:
        np.testing.assert_array_equal(np.asarray(getattr(a, name)), np.asarray(getattr(b, name)), err_msg=name)
    for key in ("tokens", "sequences", "full_length_sequences"):
        assert a.manifest[key] == b.manifest[key], key
    np.testing.assert_array_equal(np.asarray(a.value_hist), np.asarray(b.value_hist), err_msg="value_hist")
    np.testing.assert_array_equal(a.value_edges, b.value_edges)
    assert a.examples_per_neuron == b.examples_per_neuron == examples
    assert a.manifest.get("quantile_examples", 0) == b.manifest.get("quantile_examples", 0)
    for name in example_layouts(1, 1, 1, 2, example_slots(a.manifest).get(QUANTILE, 0)):
        np.testing.assert_array_equal(np.asarray(a.array(name).read().result()),
                                      np.asarray(b.array(name).read().result()), err_msg=name)
    assert (np.asarray(a.array("examples_random_window").read().result()) >= 0).any()
    ta, tb = a.ngram_table().to_arrays(), b.ngram_table().to_arrays()
    assert ta.keys() == tb.keys() and all(len(v) for v in ta.values())
    for name in ta:
        np.testing.assert_array_equal(ta[name], tb[name], err_msg=name)


class FakeDevice:
    """An accelerator as `memory_stats()` reports it: its memory limit and what is in use."""

    def __init__(self, limit: int, in_use: int = 0, name: str = "fake H200"):
        self.stats = {"bytes_limit": limit, "bytes_in_use": in_use}
        self.name = name

    def memory_stats(self) -> dict:
        return self.stats

    def __str__(self) -> str:
        return self.name


def _ranks(values: list) -> list:
    """Ranks from 1, ties sharing their average rank."""
    return [sum(w < v for w in values) + (sum(w == v for w in values) + 1) / 2 for v in values]


def recompute_claims(entry: dict, positional_embeddings: bool = True, post_ln: bool = False,
                     hidden: int = 768) -> dict:
    """Each claim's measured value, recomputed in plain Python from a report entry: id -> measured (None if n/a)."""
    L = entry["layers"]
    dead = entry["dead"]["fraction_per_layer"]
    first = [d for l, d in enumerate(dead) if l < L / 2]
    second = [d for l, d in enumerate(dead) if l >= L / 2]
    pairs = [(d, f) for d, f in zip(dead, entry["dead"]["alive_mean_frequency_per_layer"]) if f is not None]
    rho = None
    if len(pairs) >= 3 and len({d for d, _ in pairs}) > 1 and len({f for _, f in pairs}) > 1:
        a, b = _ranks([d for d, _ in pairs]), _ranks([f for _, f in pairs])
        ma, mb = sum(a) / len(a), sum(b) / len(b)
        cov = sum((x - ma) * (y - mb) for x, y in zip(a, b))
        rho = cov / (sum((x - ma) ** 2 for x in a) * sum((y - mb) ** 2 for y in b)) ** 0.5
    detectors = entry["token_detectors"]
    suppressing = [all(s < 0 for s in d["trigger_scores"]) for d in entry["suppression"]["detectors"]]

    def variants(strings):
        words = [s.strip().lower() for s in strings]
        if len(set(words)) == 1:
            return True
        k = min([3] + [len(w) for w in words])
        return k > 0 and all(w[:k] == words[0][:k] for w in words)

    positional = entry["positional"]
    kinds = [p["type"] for p in positional]
    per_layer = [sum(p["layer"] == l for p in positional) for l in range(entry["collected_layers"])]
    early = [l for l in range(len(per_layer)) if l < L / 3]
    late = [l for l in range(len(per_layer)) if l >= L / 3]
    depth = None
    if len(per_layer) >= 3 and early and late and positional:
        a = max(early, key=lambda l: (per_layer[l], -l))
        b = max(late, key=lambda l: (per_layer[l], -l))
        peak = min(per_layer[a], per_layer[b])
        depth = 0.0 if peak == 0 or b - a < 2 else max(0.0, 1 - min(per_layer[a + 1:b]) / peak)
    oscillatory = kinds.count("oscillatory")
    large = hidden >= 4096
    most_common = None
    if positional_embeddings and (large or kinds):
        most_common = oscillatory if large else oscillatory / len(kinds)
    return {
        "second_half_alive": max(second) if second else None,
        "first_half_sparse": max(first) if first else None,
        "dead_rarer_alive": rho,
        "detectors_suppress": sum(suppressing) / len(suppressing) if suppressing else None,
        "detectors_one_word": sum(variants(d["token_strings"]) for d in detectors) / len(detectors)
        if detectors else None,
        "oscillatory_most_common": most_common,
        "positional_two_stages": depth,
        "nopos_strong_positional": None if positional_embeddings else
        sum(p["strength"] == "strong" for p in positional),
        "nopos_no_oscillatory": None if positional_embeddings else oscillatory,
        "post_ln_no_dead": max(dead) if post_ln else None,
        "post_ln_positional": len(positional) if post_ln else None,
        **recompute_causal_claims(entry.get("causal")),
    }


def recompute_causal_claims(causal: dict | None) -> dict:
    """The causal claims' measured values from a report entry's `causal` (None where a set is missing)."""
    sets = (causal or {}).get("sets", {})
    control = {k: sets[k]["against_control"]["difference"] if k in sets and "against_control" in sets[k] else None
               for k in ("detectors", "positional")}
    triggers = (sets.get("detectors") or {}).get("triggers") or []
    return {
        "dead_unused_causal": sets["dead"]["change"] if "dead" in sets else None,
        "detectors_matter_causal": control["detectors"],
        "positional_matter_causal": control["positional"],
        "detectors_suppress_causal": sum(t["change"] > t["control_change"] for t in triggers) / len(triggers)
        if triggers else None,
    }


def check_claims(entry: dict, **model) -> dict:
    """Assert each claim's measured value equals `recompute_claims`; the claims by id."""
    import pytest

    want = recompute_claims(entry, **model)
    got = {c["id"]: c for c in entry["claims"]}
    assert list(got) == list(want)
    for key, value in want.items():
        assert got[key]["measured"] == (None if value is None else pytest.approx(value, abs=1e-12)), key
        assert (got[key]["holds"] is None) == (value is None), key
    return got


@contextlib.contextmanager
def small_disk(path, size: int):
    """A tmpfs of `size` bytes mounted at path (made) for the block, to fill as a full disk does; the test is
    skipped, with the reason, where mounting is not allowed (it needs root, as CI has)."""
    import pytest

    os.makedirs(path, exist_ok=True)
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True,
                            text=True)
    if result.returncode:
        pytest.skip(f"cannot mount a tmpfs to fill ({result.stderr.strip() or result.returncode}): needs root")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)
