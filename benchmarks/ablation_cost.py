"""An ablation pass's speed against HF + hooks doing the same work on the same batches
(`scripts/benchmark.py --ablation_cost`).

Both compute, per batch, the base and the edited model's next-token losses and KL(base || edited) at every
prediction, 300 random neurons zero-ablated. Ours: `analyses.interventions.passes.Pass` (the batch embedded
once, the head a block of positions at a time) plus the host tally `ablate` keeps. HF: torch `OPTForCausalLM`
under `inference_mode`, two full model calls (the second with fc1 forward hooks zeroing the neurons), then
log-softmax, the target log-probabilities and KL in torch. The variants run interleaved batch by batch
(`benchmarks.cpu.time_interleaved`); the first batch's losses are checked to agree first.
"""

from __future__ import annotations

import tempfile
import time
from typing import Callable

import numpy as np

from benchmarks.cpu import _default_log, batch_size_for, build_models, make_batches, time_interleaved
from opt_jax.config import OPTConfig


def ablated_mask(config: OPTConfig, count: int = 300, seed: int = 0) -> np.ndarray:
    """bool [layers, ffn]: `count` random neurons."""
    mask = np.zeros((config.num_hidden_layers, config.ffn_dim), bool)
    mask.reshape(-1)[np.random.default_rng(seed).choice(mask.size, count, replace=False)] = True
    return mask


class OursAblation:
    """`Pass.run` on one batch plus the host tally, as `analyses.ablate` does per batch."""

    chunk = 1

    def __init__(self, converted_dir: str, config: OPTConfig, mask: np.ndarray, batch_size: int, seq_len: int):
        from analyses.interventions.ablation import Tally
        from analyses.interventions.passes import Model, Pass
        from opt_jax.edit import Edit

        self.runner = Pass(Model.load(converted_dir), [Edit.identity(config).zero(mask)], np.zeros(1, np.int64),
                           batch_size)
        self.tally = Tally(1, seq_len, np.zeros(1, np.int64), [])
        self.info = {"implementation": "opt_jax Pass, base + 1 edit"}

    def step(self, batches: list) -> float:
        start = time.perf_counter()
        for (ids, _), out in zip(batches, self.runner.run(batches)):
            self.tally.add(ids, out)
        return time.perf_counter() - start

    def losses(self, batch) -> tuple[float, float]:
        out = self.runner.run([batch])[0]
        counted = out["counted"]
        return float(out["base_nll"][counted].mean()), float(out["nll"][0][counted].mean())

    def close(self) -> None:
        self.runner.close()


class HFAblation:
    """Two torch forwards per batch (the second with fc1 hooks zeroing the neurons), losses and KL in torch."""

    chunk = 1

    def __init__(self, model, mask: np.ndarray):
        import torch

        self.model, self.torch = model, torch
        self.gates = [torch.as_tensor(m) for m in mask]
        self.info = {"implementation": "HF OPTForCausalLM x2 + fc1 hooks",
                     "attn_implementation": model.config._attn_implementation}

    def _logp(self, ids, mask, edited: bool):
        torch = self.torch
        hooks = [layer.fc1.register_forward_hook(lambda m, i, out, g=g: torch.where(g, 0.0, out))
                 for layer, g in zip(self.model.model.decoder.layers, self.gates)] if edited else []
        try:
            logits = self.model(input_ids=torch.as_tensor(ids, dtype=torch.long),
                                attention_mask=torch.as_tensor(mask, dtype=torch.long)).logits[:, :-1]
        finally:
            for h in hooks:
                h.remove()
        return torch.log_softmax(logits.float(), -1)  # [b, s - 1, v]

    def _losses(self, ids, mask):
        torch = self.torch
        with torch.inference_mode():
            target = torch.as_tensor(ids[:, 1:], dtype=torch.long)[..., None]
            counted = torch.as_tensor(mask[:, 1:] & mask[:, :-1])
            base = self._logp(ids, mask, False)
            base_nll = -base.gather(-1, target)[..., 0]
            edited = self._logp(ids, mask, True)
            nll = -edited.gather(-1, target)[..., 0]
            kl = (base.exp() * (base - edited)).sum(-1)
            return base_nll[counted], nll[counted], kl[counted]

    def step(self, batches: list) -> float:
        start = time.perf_counter()
        for ids, mask in batches:
            base, nll, kl = self._losses(ids, mask)
            _ = (float(base.sum()), float(nll.sum()), float(kl.sum()))
        return time.perf_counter() - start

    def losses(self, batch) -> tuple[float, float]:
        base, nll, _ = self._losses(*batch)
        return float(base.mean()), float(nll.mean())

    def close(self) -> None:
        """Nothing held."""


def ablation_cost(config: OPTConfig, seq_lens=(512, 2048), tokens_per_batch: int = 4096, batches: int = 3,
                  warmup: int = 1, neurons: int = 300, workdir: str | None = None, seed: int = 0,
                  log: Callable = _default_log) -> list[dict]:
    """Per seq_len: tokens/s of our ablation pass and of HF + hooks doing the same two forwards and losses."""
    rows = []
    with tempfile.TemporaryDirectory(dir=workdir) as directory:
        models = build_models(config, directory, seed)
        mask = ablated_mask(config, neurons, seed)
        for seq_len in seq_lens:
            batch_size = batch_size_for(seq_len, tokens_per_batch)
            data = make_batches(config, seq_len, batch_size, warmup + batches, seed)
            variants = {"ours": OursAblation(models.converted_dir, config, mask, batch_size, seq_len),
                        "hf_hooks": HFAblation(models.hf_model, mask)}
            agreement = {name: v.losses(data[0]) for name, v in variants.items()}
            (ob, oe), (hb, he) = agreement["ours"], agreement["hf_hooks"]
            if not (abs(ob - hb) <= 1e-4 * abs(hb) and abs(oe - he) <= 1e-4 * abs(he)):
                raise AssertionError(f"ours and HF disagree on the first batch's losses: {agreement}")
            log(f"ablation cost: seq {seq_len} x batch {batch_size}, {batches} timed batches, {neurons} neurons; "
                f"losses agree (base {ob:.5f} vs {hb:.5f}, ablated {oe:.5f} vs {he:.5f})")
            result = time_interleaved(variants, data, warmup, log=log)
            for v in variants.values():
                v.close()
            ours, hf = result["ours"]["tokens_per_s"], result["hf_hooks"]["tokens_per_s"]
            rows.append({"seq_len": seq_len, "batch_size": batch_size, "neurons": neurons, "timed_batches": batches,
                         "ours_tok_s": ours, "hf_hooks_tok_s": hf, "ours_over_hf": ours / hf,
                         "base_loss": ob, "ablated_loss": oe})
    return rows
