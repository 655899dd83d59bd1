"""The 125m-dimension statistics store that BENCHMARKS.md's atlas rows are measured on, with today's content.

    python -m benchmarks.atlas_store OUT [--quantile_examples 4] [--no_quantile OUT2]

The model and text of `make test-real`'s `test_opt_125m_dimensions_end_to_end` (tests/scale_data.py: a random
`OPTForCausalLM` of 125m's widths whose neurons fire at spread-out rates, seed 3; 3 Zipf documents over a
50272-word tokenizer, seed 5, i.e. 6 full windows of 2048 tokens), converted and collected through the scripts as
that test collects them (batch 4, full-length windows only, token layers 0-5, bigrams and trigrams), plus what the
atlas shows since: value histograms (the default bins), `--quantile_examples` and context activations
(`scripts/contexts.py`, its default 32 tokens before and 8 after). Writes OUT/{hf-bin, converted, corpus.jsonl,
stats}. `--no_quantile OUT2`: also a view of the same store without its quantile set (OUT2/stats: links to OUT's
arrays and a manifest without `quantile_examples`), so an atlas of both shows what the quantile bands add.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(script: str, *args: str) -> None:
    start = time.perf_counter()
    subprocess.run([sys.executable, os.path.join(ROOT, "scripts", script), *args], check=True)
    print(f"{script}: {time.perf_counter() - start:.1f} s", flush=True)


def write_store(out: str, quantile_examples: int) -> str:
    """The store in out/stats (kept when complete); its path."""
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    import scale_data as sd

    stats = os.path.join(out, "stats")
    if os.path.isfile(os.path.join(stats, "manifest.json")) and json.load(open(os.path.join(stats, "manifest.json"))
                                                                           ).get("contexts", {}).get("complete"):
        return stats
    model = sd.sparse_random_model(sd.OPT_125M, seed=3)
    hf = sd.save_as_facebook_bin(model, os.path.join(out, "hf-bin"), shards=2)
    words = sd.write_word_tokenizer(hf)
    corpus = sd.write_corpus(os.path.join(out, "corpus.jsonl"), sd.zipf_documents(3, (4100, 5200), len(words), seed=5),
                             words)
    converted = os.path.join(out, "converted")
    run("convert.py", "--hf_path", hf, "--out", converted)
    run("collect.py", "--model", converted, "--corpus", corpus, "--out", stats, "--seq_len", "2048", "--batch_size", "4",
        "--full_length_only", "--ngram_orders", "2,3", "--ngram_max_pairs", "200000000",
        "--quantile_examples", str(quantile_examples))
    run("contexts.py", "--stats", stats)
    return stats


def without_quantile(stats: str, out: str) -> str:
    """out/stats: the store's arrays linked, its manifest without the quantile set; its path."""
    view = os.path.join(out, "stats")
    os.makedirs(view, exist_ok=True)
    for name in os.listdir(stats):
        if name != "manifest.json" and not os.path.lexists(os.path.join(view, name)):
            os.symlink(os.path.join(os.path.abspath(stats), name), os.path.join(view, name))
    with open(os.path.join(stats, "manifest.json")) as f:
        manifest = json.load(f)
    manifest["quantile_examples"] = 0
    manifest["arrays"] = {k: v for k, v in manifest["arrays"].items() if "quantile" not in k}
    with open(os.path.join(view, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1)
    return view


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out")
    parser.add_argument("--quantile_examples", type=int, default=4)
    parser.add_argument("--no_quantile", default=None, help="also write the view without the quantile set here")
    args = parser.parse_args()
    stats = write_store(args.out, args.quantile_examples)
    print(stats)
    if args.no_quantile:
        print(without_quantile(stats, args.no_quantile))


if __name__ == "__main__":
    main()
