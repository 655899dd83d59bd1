"""The whole pipeline at OPT's real dimensions: vocab 50272, 2048 positions, 125m and 350m widths, 66b widths.

Random weights (no OPT checkpoint can be downloaded here) saved as the facebook/opt-* repositories ship them,
a 50272-entry tokenizer and Zipf-like text made here (`scale_data`). Convert -> collect -> analyze run through
the scripts, as a user runs them; every stored array is checked against torch forward hooks on the same
windows (bracketed: see `scale_data.Bracket`), every analysis against a plain numpy recomputation from the
checked arrays. Marked `real`: minutes and several GB each; `make test-real` (and so CI) runs them.
"""

from __future__ import annotations

import json
import math
import os
import subprocess

import numpy as np
import pytest

import analyses
from analyses import suppression
import hf_models
import opt_jax
import scale_data as sd
from helpers import check_claims, devices_env
from helpers import run_script as run_python
from opt_jax import checkpoint as ckpt
from opt_jax.streaming import layer_bytes

pytestmark = pytest.mark.real
SEQ = 2048
# Detector thresholds loose enough that random weights have detectors to compare; the paper's are checked too.
LOOSE = {"detector_max_tokens": 20, "detector_max_trigrams": 60, "detector_coverage": 0.8,
         "detector_item_fraction": 0.5, "detector_covered_fraction": 0.6}
BIN_EDGES = (1, 2, 3, 4, 5, 6, 11, 21, 51, 101, 501, 1001)


def run_script(name: str, *args: str, timeout: int = 1800) -> subprocess.CompletedProcess:
    result = run_python(f"scripts/{name}", *args, env=devices_env(1), timeout=timeout)
    assert result.returncode == 0, f"{name} failed:\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}"
    return result


def peak_rss_of(name: str, *args: str) -> tuple[int, str]:
    """Run a script in a fresh interpreter that reports its own peak RSS (VmHWM) at exit: (bytes, stdout)."""
    code = ("import runpy, sys, atexit\n"
            "from benchmarks.conversion import peak_rss\n"
            "atexit.register(lambda: print('PEAK_RSS', peak_rss(), flush=True))\n"
            f"sys.argv = ['scripts/{name}', *{list(args)!r}]\n"
            f"runpy.run_path('scripts/{name}', run_name='__main__')\n")
    result = run_python("-c", code, env=devices_env(1), timeout=3000)
    peak = [int(line.split()[1]) for line in result.stdout.splitlines() if line.startswith("PEAK_RSS")]
    return (peak[0] if peak else -1), result


# ---------------------------------------------------------------------------------------------------------------
# Plain recomputations of the analyses from the stored (and torch-checked) arrays.

def covering_count(counts: np.ndarray, fraction: float) -> int:
    """Fewest items whose counts reach `fraction` of the total (0 when there is none)."""
    if counts.sum() == 0:
        return 0
    running = np.cumsum(np.sort(counts)[::-1])
    return int(np.argmax(running >= fraction * counts.sum())) + 1


def by_neuron(items: np.ndarray, neurons: np.ndarray, counts: np.ndarray, ffn: int):
    """{neuron: (items, counts)} of sparse triples."""
    order = np.argsort(neurons, kind="stable")
    items, neurons, counts = items[order], neurons[order], counts[order]
    bounds = np.searchsorted(neurons, np.arange(ffn + 1))
    return {n: (items[bounds[n]:bounds[n + 1]], counts[bounds[n]:bounds[n + 1]]) for n in range(ffn)
            if bounds[n + 1] > bounds[n]}


def reference_detectors(groups: dict, occurrences: dict, max_items: int, t: dict) -> dict:
    found = {}
    for n, (items, counts) in groups.items():
        c = covering_count(counts, t["detector_coverage"])
        occ = np.array([occurrences[i] for i in items])
        covered = counts >= t["detector_item_fraction"] * occ
        if 1 <= c <= max_items and counts[covered].sum() >= t["detector_covered_fraction"] * counts.sum():
            found[n] = set(items[covered].tolist())
    return found


def histogram(codes: list[int]) -> list[int]:
    edges = list(BIN_EDGES) + [math.inf]
    return [sum(lo <= c < hi for c in codes) for lo, hi in zip(edges, edges[1:])]


def mutual_information(pos_act: np.ndarray, pos_tokens: np.ndarray) -> np.ndarray:
    """I(act; pos) per neuron over positions 1.. with tokens (BOS excluded), in float64: [n]."""
    keep = np.flatnonzero(pos_tokens[1:] > 0) + 1
    counts, tokens = pos_act[keep].astype(np.float64), pos_tokens[keep].astype(np.float64)  # [p, n], [p]
    weight = tokens / tokens.sum()  # [p]
    f = counts / tokens[:, None]  # [p, n]
    fr = counts.sum(axis=0) / tokens.sum()  # [n]
    with np.errstate(divide="ignore", invalid="ignore"):
        on = np.where(f > 0, f * np.log(f / fr), 0.0)
        off = np.where(f < 1, (1 - f) * np.log((1 - f) / (1 - fr)), 0.0)
    return np.maximum((weight[:, None] * (on + off)).sum(axis=0), 0.0)


# ---------------------------------------------------------------------------------------------------------------

def check_pipeline(model, hf_dir: str, tmp, docs, vocab_words, token_layers, batch_size: int,
                   project_out: bool = False) -> dict:
    """convert -> collect -> analyze through the scripts; the arrays against torch, the analyses against numpy."""
    config = model.config
    converted = str(tmp / "converted")
    run_script("convert.py", "--hf_path", hf_dir, "--out", converted)
    corpus = sd.write_corpus(str(tmp / "corpus.jsonl"), docs, vocab_words)
    windows = sd.full_windows(docs, SEQ)  # [w, s]
    stats_dir = str(tmp / "stats")
    args = ["--model", converted, "--corpus", corpus, "--out", stats_dir, "--seq_len", str(SEQ),
            "--batch_size", str(batch_size), "--full_length_only", "--ngram_orders", "2,3",
            "--ngram_max_pairs", "200000000"]
    if token_layers is not None:
        args += ["--token_layers", ",".join(map(str, token_layers))]
    peak, result = peak_rss_of("collect.py", *args)
    assert result.returncode == 0, result.stderr[-6000:]
    stats = analyses.open_stats(stats_dir)
    token_layers = stats.token_layers
    if token_layers is None:
        token_layers = list(range(config.num_hidden_layers // 2))
    ffn, vocab = config.ffn_dim, config.vocab_size

    # The arrays against torch forward hooks on the same windows.
    assert stats.manifest["complete"] and stats.sequences == len(windows) and stats.tokens == windows.size
    np.testing.assert_array_equal(np.asarray(stats.pos_tokens), np.full(SEQ, len(windows)))
    np.testing.assert_array_equal(np.asarray(stats.token_occ), np.bincount(windows[:, 1:].ravel(), minlength=vocab))
    ref = sd.torch_counts(model, windows, token_layers)
    assert ref.near_zero < 1e-5 * ref.cells, f"the bracket must leave almost nothing open ({ref.near_zero} cells)"
    act, pos_act = np.asarray(stats.act), None
    np.testing.assert_array_equal(np.asarray(stats.value_hist).sum(-1), act)  # torch-checked: test_value_hist.py
    for l in range(config.num_hidden_layers):
        assert (ref.lo[f"act/{l}"] <= act[l]).all() and (act[l] <= ref.hi[f"act/{l}"]).all(), l
        pos_act = stats.pos_act[l]
        assert (ref.lo[f"pos_act/{l}"] <= pos_act).all() and (pos_act <= ref.hi[f"pos_act/{l}"]).all(), l
    table = stats.ngram_table()
    for t in range(len(token_layers)):
        layer = stats.tok_act.view(t)
        rows, cols = [], []
        for start in range(0, vocab, 4096):
            block = layer[start:start + 4096]  # [r, n]
            r, c = np.nonzero(block)
            rows.append((r + start) * ffn + c)
            cols.append(block[r, c])
        keys, counts = np.concatenate(rows), np.concatenate(cols)
        sd.assert_bracketed(keys, counts, ref.lo[f"tok/{t}"], ref.hi[f"tok/{t}"], f"tok_act[{t}]")
        assert counts.sum() == pytest.approx(act[token_layers[t]].sum() - pos_act_at_bos(stats, token_layers[t]))
        for n in (2, 3):
            gram, neuron, count = table.pairs(n, t)
            sd.assert_bracketed(gram * ffn + neuron, count, ref.lo[f"ngram{n}/{t}"], ref.hi[f"ngram{n}/{t}"],
                                f"{n}-grams of token layer {t}")
    for n in (2, 3):
        got_ids, got_counts = table.occurrences(n)
        want_ids, want_counts = sd.ngram_occurrences(windows, n, vocab)
        np.testing.assert_array_equal(got_ids, want_ids)
        np.testing.assert_array_equal(got_counts, want_counts)

    # The analyses against plain recomputations from those arrays.
    report_dir = str(tmp / "report")
    flags = [f"--{k}={v}" for k, v in LOOSE.items()] + ["--positional_mi_threshold=0"]
    run_script("analyze.py", "--stats", stats_dir, "--out", report_dir, "--names", "m", *flags)
    with open(os.path.join(report_dir, "report.json")) as f:
        full = json.load(f)
    got = full["models"]["m"]
    for name in full["figures"]:  # every figure drawn, the post-LN model's (Fig. 16) as well
        assert os.path.getsize(os.path.join(report_dir, name)) > 0, name
    check_claims(got, post_ln=project_out, hidden=config.hidden_size)
    alive = act > 0
    np.testing.assert_allclose(got["dead"]["fraction_per_layer"], 1 - alive.mean(axis=1))
    for l, value in enumerate(got["dead"]["alive_mean_frequency_per_layer"]):
        assert value == pytest.approx(act[l][alive[l]].mean() / stats.tokens)
    occurrences = {1: dict(enumerate(np.asarray(stats.token_occ).tolist()))}
    for n in (2, 3):
        occurrences[n] = dict(zip(*(a.tolist() for a in table.occurrences(n))))
    detectors = {1: [], 3: []}
    for t, l in enumerate(token_layers):
        layer = np.asarray(stats.tok_act[t])  # [v, n]
        v, n = np.nonzero(layer)
        groups = {1: by_neuron(v, n, layer[v, n], ffn)}
        del layer
        for order in (2, 3):
            groups[order] = by_neuron(*table.pairs(order, t), ffn)
        for order in (1, 2, 3):
            codes = [covering_count(groups[order][k][1], 0.95) if k in groups[order] else 0
                     for k in np.flatnonzero(alive[l])]
            row = got["coverage"][str(order)]["per_layer"][t]
            assert row["counts"] == histogram(codes), (order, l)
            assert row["no_item"] == sum(c == 0 for c in codes)
        for order, limit in ((1, LOOSE["detector_max_tokens"]), (3, LOOSE["detector_max_trigrams"])):
            found = reference_detectors(groups[order], occurrences[order], limit, LOOSE)
            detectors[order] += [(l, k, v) for k, v in found.items()]
    for order, key, field in ((1, "token_detectors", "tokens"), (3, "trigram_detectors", "ngrams")):
        want = {(l, k): v for l, k, v in detectors[order]}
        if order == 3:
            want = {k: {tuple(sd_decode(i, 3, vocab)) for i in v} for k, v in want.items()}
        else:
            want = {k: {(i,) for i in v} for k, v in want.items()}
        found = {(d["layer"], d["neuron"]): {(i,) if order == 1 else tuple(i) for i in d[field]} for d in got[key]}
        assert found == want, key
    assert detectors[1], "the loose thresholds should find token detectors in the random model"

    decoder = model.model.decoder
    embedding = decoder.embed_tokens.weight.detach().double().numpy()  # [v, e]
    for d in got["suppression"]["detectors"]:
        update = decoder.layers[d["layer"]].fc2.weight[:, d["neuron"]].detach().double().numpy()  # [h]
        if project_out:
            update = decoder.project_out.weight.detach().double().numpy() @ update  # [e]
        scores = embedding @ update  # [v]
        np.testing.assert_allclose(d["trigger_scores"], scores[d["triggers"]], rtol=1e-4, atol=1e-5)
        # Scores are float32 in the analysis: over 50272 tokens, neighbours closer than its rounding may swap, and
        # it counts as lower only scores below a trigger's by more than TIE_TOLERANCE of the largest |score|, an
        # edge that float32 rounding blurs by less than that tolerance again.
        tol = suppression.TIE_TOLERANCE * np.abs(scores).max()
        for rank, s in zip(d["trigger_ranks_among_suppressed"], scores[d["triggers"]]):
            assert (scores < s - 2 * tol).sum() + 1 <= rank <= (scores < s + tol).sum() + 1
        top = scores[d["top_suppressed"]]  # the k lowest scores, lowest first
        assert (np.diff(top) >= -tol).all() and top[-1] <= np.sort(scores)[len(top) - 1] + tol
    assert len(got["suppression"]["detectors"]) == len(detectors[1])

    found = {(p["layer"], p["neuron"]): p["mi"] for p in got["positional"]}
    pos_tokens = np.asarray(stats.pos_tokens)
    for l in range(config.num_hidden_layers):
        mi = mutual_information(stats.pos_act[l], pos_tokens)  # [n]
        listed = {n for (layer, n) in found if layer == l}
        assert listed == set(np.flatnonzero(mi > 1e-12).tolist()), l
        for n in listed:
            assert found[l, n] == pytest.approx(mi[n], rel=1e-9, abs=1e-12)
    return {"peak_rss": peak, "stdout": result.stdout + result.stderr, "stats": stats, "converted": converted}


def pos_act_at_bos(stats, layer: int) -> int:
    """Activations at position 0 (BOS): in act, never in tok_act."""
    return int(stats.pos_act[layer][0].sum())


def sd_decode(ngram_id: int, order: int, vocab: int) -> list[int]:
    out = []
    for _ in range(order):
        ngram_id, token = divmod(ngram_id, vocab)
        out.append(token)
    return out[::-1]


# Run first of the whole session (`heaviest`, tests/conftest.py): it needs ~20 GB of the 24 GB machine, before
# earlier tests have grown this process (in CI, after the real tests of other files, 5 GB of 25.3 were in use).
@pytest.mark.heaviest(20)
def test_opt_66b_widths_stream_in_bounded_memory(tmp_path):
    """Two layers of OPT-66b's widths (9216 hidden, 72 heads, 36864 neurons), streamed a layer a group, one token
    layer, 512 tokens, float32 on the 24 GB machine.

    It completes: weights 8.2 GB + tok_act 7.4 GB + embedding 1.9 GB fit, and a flush now moves one 32 MiB
    chunk at a time (before, the whole 7.4 GB token layer crossed to the host at once: 23.9 GB peak in
    float16, killed in float32). With both layers as token layers it is refused before allocating.
    """
    config = opt_jax.OPTConfig(**sd.OPT_66B_2L)
    converted = sd.write_random_converted(str(tmp_path / "converted"), config, "float16", seed=7)
    vocab_words = sd.write_word_tokenizer(converted)
    docs = sd.zipf_documents(1, (600, 700), len(vocab_words), seed=8)
    corpus = sd.write_corpus(str(tmp_path / "corpus.jsonl"), docs, vocab_words)
    windows = sd.full_windows(docs, 512)[:1]  # [1, 512]
    common = ["--model", converted, "--corpus", corpus, "--seq_len", "512", "--batch_size", "1", "--offload",
              "--group_size", "1", "--dtype", "float32", "--full_length_only", "--max_tokens", "512"]
    refused = run_python("scripts/collect.py", *common, "--out", str(tmp_path / "both"), "--token_layers", "0,1",
                         env=devices_env(1))
    import psutil

    if refused.returncode == 0:
        assert psutil.virtual_memory().total > 40e9, "two 66b token layers cannot fit in 24 GB"
    else:
        assert "tok_act 2 layers x 7.4 GB" in refused.stdout + refused.stderr and "--token_layers" in refused.stdout \
            + refused.stderr, refused.stderr[-3000:]
        assert not os.path.exists(tmp_path / "both" / "data-000001"), "refused before counting anything"

    peak, result = peak_rss_of("collect.py", *common, "--out", str(tmp_path / "stats"), "--token_layers", "0")
    if result.returncode != 0 and not os.environ.get("CI"):  # a developer's machine busy with other work
        assert "are free" in result.stdout + result.stderr, result.stderr[-3000:]
        pytest.skip("refused up front: " + (result.stdout + result.stderr).strip().splitlines()[-1])
    assert result.returncode == 0, f"CI's 24 GB machine must run it:\n{result.stdout[-2000:]}{result.stderr[-4000:]}"
    stats = analyses.open_stats(str(tmp_path / "stats"))
    assert stats.tokens == 512
    act, pos_act = np.asarray(stats.act), [stats.pos_act[l] for l in range(2)]
    for l in range(2):
        np.testing.assert_array_equal(pos_act[l].sum(axis=0), act[l])  # act = pos_act summed over positions
    layer = stats.tok_act.view(0)
    tok_total = sum(layer[s:s + 1024].sum(axis=0) for s in range(0, config.vocab_size, 1024))  # [n]
    np.testing.assert_array_equal(tok_total + pos_act[0][0], act[0])  # + the BOS row
    assert 0 < act[0].sum() < 0.5 * 512 * config.ffn_dim
    print(f"66b widths, 2 layers, float32: collect peak RSS {peak / 1e9:.2f} GB")
    # Weights, the token layer's counters and the embedding (17.4 GB), plus the runtime, a step and one commit
    # block (measured 19.9 GB in all); no whole [vocab, ffn] layer on the host, which alone is 7.4 GB as int32.
    arrays = 2 * layer_bytes(config, 4) + config.vocab_size * config.ffn_dim * 4 + config.vocab_size * 9216 * 4
    assert peak < arrays + 3.5e9, f"peak RSS {peak / 1e9:.1f} GB, arrays {arrays / 1e9:.1f} GB"

    # Layer 0 against an independent float64 numpy forward of the same window.
    params = ckpt.read_params(converted, "float32", layers=slice(0, 1))
    fc1 = numpy_layer0_fc1(config, params, windows[0])  # [s, n]
    sure_on, sure_off = fc1 > 1e-3, fc1 < -1e-3
    got = stats.pos_act[0]  # [s, n]: one window, so each cell is 0 or 1
    assert (got[sure_on] == 1).all() and (got[sure_off] == 0).all()
    assert (sure_on | sure_off).mean() > 0.9999


def test_opt_125m_dimensions_end_to_end(tmp_path):
    """12 layers, 768 wide, 3072 neurons, vocab 50272, 2048-token windows; the default token layers (0-5)."""
    model = sd.sparse_random_model(sd.OPT_125M, seed=3)
    bin_dir = sd.save_as_facebook_bin(model, str(tmp_path / "hf-bin"), shards=2)
    vocab_words = sd.write_word_tokenizer(bin_dir)
    st_dir = hf_models.save(model, str(tmp_path / "hf-st"), "safetensors")
    sd.write_word_tokenizer(st_dir)
    # both layouts convert to the same arrays
    from_st = opt_jax.convert(st_dir, str(tmp_path / "from-safetensors"), verbose=False)
    docs = sd.zipf_documents(3, (4100, 5200), len(vocab_words), seed=5)  # 2 full windows each, a short rest
    result = check_pipeline(model, bin_dir, tmp_path, docs, vocab_words, None, batch_size=4)  # last batch: 2 of 4
    a, b = ckpt.read_params(result["converted"]), ckpt.read_params(from_st)
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    assert result["stats"].token_layers == [0, 1, 2, 3, 4, 5]
    rate = [line for line in result["stdout"].replace("\r", "\n").splitlines() if "tokens/s" in line][-1:]
    print(f"\n125m dimensions, 6 windows x 2048, 6 token layers, bigrams + trigrams: collect peak RSS "
          f"{result['peak_rss'] / 1e9:.2f} GB; {rate}")
    check_atlas_layer(result, tmp_path / "atlas", layer=1)


def check_atlas_layer(result: dict, out, layer: int) -> None:
    """One layer's atlas at real dimensions (vocab 50272, 2048 positions): the summary has a row per neuron, the
    curves are binned to 512 points, the triggers and update scores match numpy on the stored arrays and weights."""
    from analyses.neurons.data_files import read_js

    stats, converted = result["stats"], result["converted"]
    ffn = stats.config.ffn_dim
    run_script("atlas.py", "--stats", stats.root, "--out", str(out), "--layers", str(layer), "--block", "512")
    _, summary = read_js(str(out / "data" / "m0" / f"L{layer}" / "summary.js"))
    assert len(summary["freq"]) == len(summary["label"]) == ffn
    act = stats.act[layer]
    np.testing.assert_allclose(summary["freq"], act / stats.tokens, rtol=1e-5)
    _, block = read_js(str(out / "data" / "m0" / f"L{layer}" / "B0.js"))
    assert len(block["neurons"]) == 512 and (out / "data" / "m0" / f"L{layer}" / "B5.js").is_file()
    counts = stats.tok_act[stats.token_layers.index(layer)]  # [v, n]
    embedding = ckpt.read_params(converted, "float32", layers=slice(0, 0))["embed/tokens"].astype(np.float64)
    fc2 = np.asarray(ckpt.open_array(converted, "layers/ffn/fc2/weight")[layer].read().result(), np.float64)
    alive = [n for n in range(512) if act[n] > 0][:8]
    assert alive
    for n in alive:
        record = block["neurons"][n]
        assert record["curve"]["binned"] == 4 and len(record["curve"]["freq"]) == 512  # 2047 positions in bins of 4
        column = counts[:, n]
        want = sorted(np.flatnonzero(column), key=lambda i: (-column[i], i))[:10]
        assert [t["token"] for t in record["triggers"]] == [int(i) for i in want]
        scores = embedding @ fc2[:, n]  # [v]
        np.testing.assert_allclose([t["score"] for t in record["promoted"]], np.sort(scores)[::-1][:10], rtol=2e-3)
        np.testing.assert_allclose([t["score"] for t in record["suppressed"]], np.sort(scores)[:10], rtol=2e-3)
        assert len(record["examples"]["top"]) == min(16, int(act[n]))
        assert all(len(e["tokens"]) <= 17 and 0 <= e["fire"] < len(e["tokens"]) for e in record["examples"]["top"])


def test_atlas_of_a_synthetic_66b_shaped_store(tmp_path):
    """Two layers of 66b's width (36864 neurons, 2048 positions) with synthetic counts and examples: every
    neuron has a summary row and a record, the planted square waves are the strong oscillatory neurons, and no
    data file is large (each loads in well under a second)."""
    from analyses.neurons.data_files import read_js
    from benchmarks.scale import write_synthetic_stats

    config = opt_jax.for_size("66b").replace(num_hidden_layers=2)
    stats = write_synthetic_stats(str(tmp_path / "stats"), config, sequences=100, positional=64, examples=2,
                                  verbose=False)
    out = tmp_path / "atlas"
    run_script("atlas.py", "--stats", stats, "--out", str(out), "--block", "1024")
    _, manifest = read_js(str(out / "data" / "atlas.js"))
    counts = manifest["models"][0]["counts"]
    assert [c["neurons"] for c in counts] == [36864, 36864]
    assert [c["positional_strong"]["oscillatory"] for c in counts] == [64, 64]
    assert counts[0]["dead"] / 36864 == pytest.approx(0.7, abs=0.01)
    _, summary = read_js(str(out / "data" / "m0" / "L1" / "summary.js"))
    assert len(summary["label"]) == 36864 and summary["pos"][:64] == ["oscillatory"] * 64
    _, last = read_js(str(out / "data" / "m0" / "L1" / "B35.js"))
    assert [r["n"] for r in last["neurons"]] == list(range(35 * 1024, 36864))
    sizes = [os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(out / "data") for f in files]
    print(f"\n66b-shaped atlas, 2 layers: {sum(sizes) / 1e6:.0f} MB in {len(sizes)} files, largest "
          f"{max(sizes) / 1e6:.1f} MB")
    assert max(sizes) < 40e6


def test_opt_350m_dimensions_end_to_end(tmp_path):
    """Post-LN, project_in / project_out, 512-wide embeddings, 24 layers of 4096 neurons; fewer tokens."""
    model = sd.sparse_random_model(sd.OPT_350M, seed=4)
    hf_dir = hf_models.save(model, str(tmp_path / "hf"), "sharded_safetensors", max_shard_size="400MB")
    vocab_words = sd.write_word_tokenizer(hf_dir)
    docs = sd.zipf_documents(1, (2100, 2500), len(vocab_words), seed=6)  # one full window
    check_pipeline(model, hf_dir, tmp_path, docs, vocab_words, [0, 11, 12], batch_size=1, project_out=True)


def numpy_layer0_fc1(config, params: dict, ids: np.ndarray) -> np.ndarray:
    """fc1 outputs of layer 0 (pre-LN OPT) for one window, in float64 numpy, written from the OPT paper's and
    HF's definitions (positions offset by 2, queries scaled by head_dim ** -0.5, causal softmax): [seq, ffn]."""
    p = {k: v.astype(np.float64)[0] if k.startswith("layers/") else v.astype(np.float64) for k, v in params.items()}
    s = len(ids)
    x = p["embed/tokens"][ids] + p["embed/positions"][np.arange(s) + 2]  # [s, d]

    def norm(h, name):  # [s, d]
        mu, var = h.mean(-1, keepdims=True), h.var(-1, keepdims=True)
        return (h - mu) / np.sqrt(var + 1e-5) * p[f"layers/{name}/weight"] + p[f"layers/{name}/bias"]

    h = norm(x, "attn_norm")  # [s, d]
    q, k, v = (np.einsum("sd,hkd->hsk", h, p[f"layers/attn/{n}_proj/weight"])
               + p[f"layers/attn/{n}_proj/bias"][:, None, :] for n in "qkv")  # [h, s, k] each
    q = q * q.shape[-1] ** -0.5
    scores = q @ k.transpose(0, 2, 1) + np.triu(np.full((s, s), -np.inf), 1)  # [h, s, s]
    weights = np.exp(scores - scores.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)  # [h, s, s]
    context = weights @ v  # [h, s, k]
    x = x + np.einsum("hsk,dhk->sd", context, p["layers/attn/o_proj/weight"]) + p["layers/attn/o_proj/bias"]
    h = norm(x, "ffn_norm")  # [s, d]
    return h @ p["layers/ffn/fc1/weight"].T + p["layers/ffn/fc1/bias"]  # [s, n]


@pytest.mark.parametrize("fields", [dict(sd.OPT_125M, num_hidden_layers=2), dict(sd.OPT_350M, num_hidden_layers=2)],
                         ids=["125m_widths", "350m_layout"])
def test_ablation_at_real_dimensions_matches_torch(tmp_path, fields):
    """scripts/ablate.py on 2-layer models of 125m widths and of 350m's layout (post-LN, project_in/out), vocab
    50272, 2048-token windows (a short last one too): losses and KL against torch with fc1 hooks zeroing the
    same neurons on windows cut here."""
    import torch

    model = sd.sparse_random_model(fields, seed=4)
    hf_dir = hf_models.save(model, str(tmp_path / "hf"), "safetensors")
    vocab_words = sd.write_word_tokenizer(hf_dir)
    converted = opt_jax.convert(hf_dir, str(tmp_path / "converted"), verbose=False)
    docs = sd.zipf_documents(2, (2500, 3000), len(vocab_words), seed=6)
    corpus = sd.write_corpus(str(tmp_path / "corpus.jsonl"), docs, vocab_words)
    ffn = fields["ffn_dim"]
    # The neurons that fire most (least negative fc1 bias), three a layer, and the last neuron of layer 1.
    pairs = [(l, int(n)) for l, layer in enumerate(model.model.decoder.layers)
             for n in np.argsort(-layer.fc1.bias.detach().numpy())[:3]] + [(1, ffn - 1)]
    run_script("ablate.py", "--model", converted, "--corpus", corpus, "--out", str(tmp_path / "out"), "--seq_len",
               str(SEQ), "--batch_size", "2", "--neurons", ",".join(f"{l}:{n}" for l, n in pairs))
    with open(tmp_path / "out" / "ablation.json") as f:
        result = json.load(f)
    windows = [np.concatenate([[2], d[i:i + SEQ - 1]]) for d in docs for i in range(0, len(d), SEQ - 1)]
    mask = np.zeros((2, ffn), bool)
    mask[tuple(np.array(pairs).T)] = True
    losses, count, kl = np.zeros(2), 0, 0.0
    for w in windows:
        lps = []
        for edited in (False, True):
            hooks = [layer.fc1.register_forward_hook(lambda m, i, out, g=torch.as_tensor(mask[l]):
                                                     torch.where(g, 0.0, out))
                     for l, layer in enumerate(model.model.decoder.layers)] if edited else []
            with torch.no_grad():
                logits = model(input_ids=torch.as_tensor(w[None], dtype=torch.long)).logits[0, :-1]
            for h in hooks:
                h.remove()
            lps.append(torch.log_softmax(logits.double(), -1).numpy())  # [s - 1, v]
        for k, lp in enumerate(lps):
            losses[k] += -lp[np.arange(len(w) - 1), w[1:]].sum()
        kl += (np.exp(lps[0]) * (lps[0] - lps[1])).sum()
        count += len(w) - 1
    assert result["tokens"] == count and result["windows"] == len(windows) == 4
    assert result["base_loss"] == pytest.approx(losses[0] / count, rel=1e-5)
    assert result["ablated_loss"] == pytest.approx(losses[1] / count, rel=1e-5)
    assert result["change"] == pytest.approx((losses[1] - losses[0]) / count, abs=1e-5 * result["base_loss"])
    assert abs(losses[1] - losses[0]) / count > 1e-5, "the reference must see the ablation"
    assert result["kl"] == pytest.approx(kl / count, rel=1e-3) and result["kl"] > 0
    print(f"\n{fields['hidden_size']} wide, ablation of {len(pairs)} neurons: change {result['change']:.3e} "
          f"nats, KL {result['kl']:.3e}")
