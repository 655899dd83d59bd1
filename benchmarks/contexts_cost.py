"""What context activations cost: their pass (`analyses.collection.contexts`) against a collection pass over the same
windows, interleaved batch by batch, and the size they add to a store (`scripts/benchmark.py --contexts_cost`).

Both are resident, on the same random-token batches: collection with collect's defaults (`benchmarks.cpu.Ours`:
act, pos_act, tok_act of the first half of the layers, 16 examples per neuron and set), and the context pass
gathering every layer's examples whose window is in the batch, the example sets those of a collection over these
batches (so each batch holds its share of them, as in a real run). The size: the spans as the store writes them
(zarr3, zstd, `context_layouts`), and projected to OPT-66b by the raw size's ratio.
"""

from __future__ import annotations

import os
import tempfile
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.cpu import Ours, _default_log, build_models, make_batches, time_interleaved
from opt_jax.config import OPTConfig


class Contexts:
    """The context pass as a timed variant: one `resident_step` per batch, the batch's windows numbered by its
    place in `batches`."""

    chunk = 1
    info: dict = {}

    def __init__(self, converted_dir: str, config: OPTConfig, places: dict, batches: list, before: int, after: int):
        from analyses.collection.contexts import _On, _Resident
        from analyses.collection.runner import Weights
        from opt_jax.streaming import put_now

        weights = Weights.from_checkpoint(converted_dir)
        self.outer = put_now({"embed": weights.embed})
        self.run = _Resident(config, weights, before, before + after + 1, _On(None))  # one device, no --mesh
        self.places = [put_now(places)]
        layers, n, c = places["window"].shape
        self.state = [{"spans": jnp.zeros((layers, n, c, before + after + 1), jnp.float16),
                       "deviation": jnp.zeros((layers,), jnp.float32)}]
        self.first = {id(ids): i * len(ids) for i, (ids, _) in enumerate(batches)}

    def step(self, batches: list) -> float:
        start = time.perf_counter()
        chunk = [(jnp.asarray(ids), jnp.asarray(mask), jnp.arange(len(ids), dtype=jnp.int32) + self.first[id(ids)],
                  len(ids)) for ids, mask in batches]
        self.state = self.run(self.outer, chunk, self.state, self.places)
        jax.block_until_ready(self.state)
        return time.perf_counter() - start

    def close(self) -> None:
        del self.run


def _places(runner, layers: int) -> dict:
    """The example sets of a collection runner as the context pass holds them: {field: [layers, ffn, 2k]}."""
    sets = [runner.counters.example_sets(layer) for layer in range(layers)]
    return {f: np.stack([np.concatenate([s[kind][f] for kind in ("top", "random")], axis=-1) for s in sets])
            for f in ("window", "position", "value")}


def stored_bytes(spans: np.ndarray, k: int, directory: str) -> int:
    """Bytes on disk of the spans [layers, ffn, 2k, span] written as the store writes them."""
    from analyses.collection.contexts import context_layouts
    from analyses.collection.store import create_array
    from opt_jax import disk

    layers, ffn, _, span = spans.shape
    total = 0
    for i, (name, (shape, chunk, dtype, fill)) in enumerate(context_layouts(layers, ffn, {"top": k, "random": k}, span).items()):
        path = os.path.join(directory, name)
        create_array(path, shape, chunk, dtype, fill).write(spans[:, :, i * k:(i + 1) * k]).result()
        total += disk.used_bytes(path)
    return total


def contexts_cost(config: OPTConfig, seq_len: int = 2048, batch_size: int = 2, batches: int = 4, warmup: int = 1,
                  examples: int = 16, before: int = 32, after: int = 8, workdir: str | None = None, seed: int = 0,
                  log: Callable = _default_log) -> dict:
    """Tokens/s of collection and of the context pass on the same batches, their ratio, and the size the spans add
    (measured, and projected to OPT-66b)."""
    import opt_jax

    span = before + after + 1
    with tempfile.TemporaryDirectory(dir=workdir) as directory:
        models = build_models(config, directory, seed)
        data = make_batches(config, seq_len, batch_size, warmup + batches, seed)
        collection = Ours(models.converted_dir, config, (batch_size, seq_len), examples=examples)
        log(f"contexts cost: the example sets of {len(data)} batches of {batch_size} x {seq_len}")
        for i, batch in enumerate(data):
            collection.runner.run([batch], [i * batch_size])
        places = _places(collection.runner, config.num_hidden_layers)
        collection.runner.reset(fresh=True)  # collection timed as a new run's, its sets empty
        variants = {"collection": collection,
                    "contexts": Contexts(models.converted_dir, config, places, data, before, after)}
        result = time_interleaved(variants, data, warmup, log=log)
        spans = np.asarray(variants["contexts"].state[0]["spans"])  # [l, n, 2k, w]
        written = stored_bytes(spans, examples, os.path.join(directory, "spans"))
        for v in variants.values():
            v.close()
    raw = spans.size * 2
    big = opt_jax.for_size("66b")
    raw_66b = big.num_hidden_layers * big.ffn_dim * 2 * examples * span * 2
    return {"seq_len": seq_len, "batch_size": batch_size, "timed_batches": batches, "examples": examples,
            "span": span, "collection_tok_s": result["collection"]["tokens_per_s"],
            "contexts_tok_s": result["contexts"]["tokens_per_s"],
            "ratio": result["collection"]["tokens_per_s"] / result["contexts"]["tokens_per_s"],
            "collection_step_s": result["collection"]["step_seconds"],
            "contexts_step_s": result["contexts"]["step_seconds"],
            "filled_slots": float(np.mean(places["window"] >= 0)),
            "raw_bytes": raw, "stored_bytes": written, "raw_bytes_66b": raw_66b,
            "stored_bytes_66b_projected": int(raw_66b * written / raw)}
