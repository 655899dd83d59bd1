"""Test data at OPT's real sizes, made offline: a 50272-entry tokenizer, Zipf-like text, OPT-shaped checkpoints.

- `write_word_tokenizer`: a word-level tokenizer of exactly OPT's 50272 entries, OPT's special ids
  (`<s>` 0, `<pad>` 1, `</s>` 2, `<unk>` 3), saved as `transformers` loads it.
- `zipf_documents`: documents whose words follow a Zipf-Mandelbrot law over that vocabulary, so token
  statistics are as sparse as on real text (most of the vocabulary unseen, a few words everywhere).
- `sparse_random_model`: a random `OPTForCausalLM` whose neurons fire at frequencies spread over four orders
  of magnitude (fc1 biases below zero), as OPT's early layers do, instead of the ~50% of plain random weights.
- `save_as_facebook_bin`: `pytorch_model-0000i-of-0000n.bin` shards with `decoder.*` keys and an index, the
  layout of the `facebook/opt-*` repositories.
- `write_random_converted`: a converted checkpoint written layer by layer (66b widths without holding a model).
- `torch_counts`: act / pos_act / tok_act and n-gram pairs from torch forward hooks, bracketed: `lo` counts fc1
  outputs > eps, `hi` those > -eps, so a float32 rounding difference near zero cannot fail a comparison while any
  real difference does.
"""

from __future__ import annotations

import json
import os
import zlib

import numpy as np
import torch

import hf_models

VOCAB = 50272
SPECIAL = ["<s>", "<pad>", "</s>", "<unk>"]
OPT_125M = dict(num_hidden_layers=12, hidden_size=768, num_attention_heads=12, ffn_dim=3072, vocab_size=VOCAB,
                max_position_embeddings=2048, word_embed_proj_dim=768)
OPT_350M = dict(num_hidden_layers=24, hidden_size=1024, num_attention_heads=16, ffn_dim=4096, vocab_size=VOCAB,
                max_position_embeddings=2048, word_embed_proj_dim=512, do_layer_norm_before=False)
OPT_66B_2L = dict(num_hidden_layers=2, hidden_size=9216, num_attention_heads=72, ffn_dim=36864, vocab_size=VOCAB,
                  max_position_embeddings=2048, word_embed_proj_dim=9216)


def words(count: int) -> list[str]:
    """`count` distinct lowercase pseudo-words of 2-4 syllables, in a fixed order."""
    onsets = ["b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "st", "tr", "sh"]
    vowels = ["a", "e", "i", "o", "u", "ai", "ou"]
    syllables = [o + v for o in onsets for v in vowels]  # 126
    out, n = [], 0
    while len(out) < count:
        k, parts = n, []
        while True:
            parts.append(syllables[k % len(syllables)])
            k //= len(syllables)
            if k == 0:
                break
        if len(parts) >= 2 or n < len(syllables):
            out.append("".join(parts))
        n += 1
    return out


def write_word_tokenizer(directory: str, vocab_size: int = VOCAB) -> list[str]:
    """Save a word-level tokenizer with exactly vocab_size entries (OPT's special ids first); its word list."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab_words = words(vocab_size - len(SPECIAL))
    vocab = {w: i for i, w in enumerate(SPECIAL + vocab_words)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="</s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>")
    fast.save_pretrained(directory)
    assert len(fast) == vocab_size
    return vocab_words


def zipf_documents(num_docs: int, doc_tokens: tuple[int, int], num_words: int, seed: int = 0,
                   exponent: float = 1.1, offset: float = 2.7) -> list[np.ndarray]:
    """Token ids (>= 4, no special tokens) of documents with Zipf-Mandelbrot word frequencies.

    Word ranks are a fixed random permutation of the ids, so frequent words are spread over the vocabulary.
    """
    rng = np.random.default_rng(seed)
    weights = 1.0 / (np.arange(num_words) + offset) ** exponent  # [w]
    ids_by_rank = rng.permutation(num_words) + len(SPECIAL)  # [w]
    lengths = rng.integers(doc_tokens[0], doc_tokens[1] + 1, num_docs)
    return [ids_by_rank[rng.choice(num_words, n, p=weights / weights.sum())] for n in lengths]


def write_corpus(path: str, docs: list[np.ndarray], vocab_words: list[str]) -> str:
    """The documents as a .jsonl corpus (words joined by spaces: the word-level tokenizer gives the ids back)."""
    with open(path, "w") as f:
        for doc in docs:
            f.write(json.dumps({"text": " ".join(vocab_words[i - len(SPECIAL)] for i in doc)}) + "\n")
    return path


def full_windows(docs: list[np.ndarray], seq_len: int, bos: int = 2) -> np.ndarray:
    """docs/collection.md's window stream with full_length_only: per document, BOS + the next seq_len - 1 tokens."""
    out = []
    for doc in docs:
        for start in range(0, len(doc) - (seq_len - 1) + 1, seq_len - 1):
            out.append(np.concatenate([[bos], doc[start:start + seq_len - 1]]))
    return np.stack(out).astype(np.int64)  # [w, s]


SMALL_STD = 0.02  # fc2 and attention weights


def sparse_random_model(fields: dict, seed: int = 0, dtype=torch.float32):
    """A random OPTForCausalLM whose neuron n fires when its pre-activation passes -bias = sigma * u_n, u_n ~ U(1, 4.5).

    sigma is the spread of fc1 outputs (0.15 * sqrt(hidden) for normalised inputs), so frequencies run from about
    30% down to never within a test's tokens.
    """
    model = hf_models.random_model(hf_models.hf_config(**fields), seed=seed)
    rng = torch.Generator().manual_seed(seed + 1)
    sigma = 0.15 * fields["hidden_size"] ** 0.5
    with torch.no_grad():
        for layer in model.model.decoder.layers:
            # Attention and layer outputs at OPT's own init (std 0.02): with 0.15 the softmax saturates and the
            # network turns chaotic, float32 rounding differences growing to whole units by layer 11.
            for linear in (layer.fc2, layer.self_attn.out_proj, layer.self_attn.q_proj, layer.self_attn.k_proj,
                           layer.self_attn.v_proj):
                linear.weight.mul_(SMALL_STD / 0.15)
            layer.fc1.bias.copy_(-sigma * (1.0 + 3.5 * torch.rand(layer.fc1.bias.shape, generator=rng)))
    return model.to(dtype)


def save_as_facebook_bin(model, directory: str, shards: int = 2) -> str:
    """Save as the facebook/opt-* repositories do: `decoder.*` keys (no `model.` prefix, no lm_head) in
    `pytorch_model-0000i-of-0000n.bin` shards, with `pytorch_model.bin.index.json` and `config.json`."""
    os.makedirs(directory, exist_ok=True)
    model.config.save_pretrained(directory)
    state = {k.removeprefix("model."): v.contiguous() for k, v in model.state_dict().items() if k != "lm_head.weight"}
    keys = list(state)
    parts = np.array_split(np.arange(len(keys)), shards)
    weight_map = {}
    for i, part in enumerate(parts, start=1):
        name = f"pytorch_model-{i:05d}-of-{shards:05d}.bin"
        torch.save({keys[j]: state[keys[j]] for j in part}, os.path.join(directory, name))
        weight_map.update({keys[j]: name for j in part})
    total = sum(v.numel() * v.element_size() for v in state.values())
    with open(os.path.join(directory, "pytorch_model.bin.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
    return directory


def write_random_converted(root: str, config, dtype: str = "float16", seed: int = 0) -> str:
    """A converted checkpoint of `config` with random weights, made and written one layer at a time.

    Same spread as `sparse_random_model`: weights N(0, 0.15) (fc2 and attention N(0, 0.02)), embeddings N(0, 0.5),
    norms N(1, 0.2), fc1 biases -sigma * U(1, 4.5).
    """
    from opt_jax import checkpoint as ckpt
    from opt_jax.model import param_shapes

    sigma = 0.15 * config.hidden_size ** 0.5

    def make(path: str, shape: tuple, layer: int | None) -> np.ndarray:
        rng = np.random.default_rng([seed, zlib.crc32(path.encode()), 0 if layer is None else layer + 1])
        if path.endswith("fc1/bias"):
            return -sigma * rng.uniform(1.0, 4.5, shape)
        if "norm" in path and path.endswith("weight"):
            return 1.0 + 0.2 * rng.standard_normal(shape, np.float32)
        if path.startswith("embed/"):
            return 0.5 * rng.standard_normal(shape, np.float32)
        if path.endswith("fc2/weight") or "/attn/" in path and path.endswith("weight"):
            return SMALL_STD * rng.standard_normal(shape, np.float32)
        return (0.2 if path.endswith("bias") else 0.15) * rng.standard_normal(shape, np.float32)

    flat = {}
    for path, shape in param_shapes(config).items():
        stacked = path.startswith("layers/")
        flat[path] = (lambda l, path=path, shape=shape: make(path, shape[1:], l)) if stacked else make(path, shape, None)
    return ckpt.write_checkpoint(root, config, flat, dtype, source="random (tests/scale_data.py)")


class Bracket:
    """Counts of fc1 outputs > eps (`lo`) and > -eps (`hi`): lo <= any exact count <= hi."""

    def __init__(self, eps: float):
        self.eps = eps
        self.lo, self.hi = {}, {}

    def add(self, name: str, fc1: torch.Tensor, reduce) -> None:
        for side, threshold in (("lo", self.eps), ("hi", -self.eps)):
            counts = reduce((fc1 > threshold).numpy())
            store = getattr(self, side)
            store[name] = counts if name not in store else store[name] + counts

    def ambiguous(self, name: str) -> int:
        """How many counts the bracket leaves open (hi - lo, summed)."""
        hi, lo = self.hi[name], self.lo[name]
        if isinstance(hi, Sparse):
            return int(hi.reduced()[1].sum() - lo.reduced()[1].sum())
        return int(np.sum(hi - lo))


def torch_counts(model, windows: np.ndarray, token_layers, orders=(2, 3), eps: float = 2e-4, batch: int = 2):
    """Bracketed statistics of full-length windows from torch forward hooks on every fc1.

    Returns a Bracket with `act` [l, n], `pos_act` [l, s, n] per layer name `act/l`, `pos_act/l`, token layer t's
    `tok/t` (dict key -> count, key = token * ffn + neuron) and `ngram{n}/t` (key = ngram_id * ffn + neuron, the
    store's key) as sparse dicts in `lo` / `hi`, plus `cells` (fc1 outputs seen) and `near_zero`.
    """
    decoder = model.model.decoder
    ffn, vocab = decoder.layers[0].fc1.out_features, decoder.embed_tokens.num_embeddings
    out = Bracket(eps)
    out.cells, out.near_zero = 0, 0
    for start in range(0, len(windows), batch):
        ids = windows[start:start + batch]  # [b, s]
        b, s = ids.shape
        captured = {}
        hooks = [layer.fc1.register_forward_hook(lambda m, i, o, l=l: captured.__setitem__(l, o.detach().float()))
                 for l, layer in enumerate(decoder.layers)]
        try:
            with torch.no_grad():
                decoder(input_ids=torch.as_tensor(ids), attention_mask=torch.ones(b, s, dtype=torch.long))
        finally:
            for h in hooks:
                h.remove()
        for l, fc1 in captured.items():
            fc1 = fc1.reshape(b, s, ffn)  # [b, s, n]
            out.cells += fc1.numel()
            out.near_zero += int((fc1.abs() <= eps).sum())
            out.add(f"act/{l}", fc1, lambda m: m.sum(axis=(0, 1), dtype=np.int64))  # [n]
            out.add(f"pos_act/{l}", fc1, lambda m: m.sum(axis=0, dtype=np.int64))  # [s, n]
            if l in token_layers:
                t = list(token_layers).index(l)
                out.add(f"tok/{t}", fc1, lambda m: _pair_counts(ids, m, 1, vocab, ffn))
                for n in orders:
                    out.add(f"ngram{n}/{t}", fc1, lambda m, n=n: _pair_counts(ids, m, n, vocab, ffn))
    return out


class Sparse:
    """key -> count as sorted arrays (`keys`, `counts`); `+` concatenates, reduced when read."""

    def __init__(self, keys=(), counts=()):
        self._parts = [(np.asarray(keys, np.int64), np.asarray(counts, np.int64))]

    def __add__(self, other: "Sparse") -> "Sparse":
        out = Sparse()
        out._parts = self._parts + other._parts
        return out

    def reduced(self) -> tuple[np.ndarray, np.ndarray]:
        keys = np.concatenate([k for k, _ in self._parts])
        counts = np.concatenate([c for _, c in self._parts])
        unique, inverse = np.unique(keys, return_inverse=True)
        self._parts = [(unique, np.bincount(inverse, counts, minlength=len(unique)).astype(np.int64))]
        return self._parts[0]


def at(keys: np.ndarray, counts: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """counts of `wanted` keys in a sorted (keys, counts) table, 0 where absent."""
    where = np.clip(np.searchsorted(keys, wanted), 0, max(len(keys) - 1, 0))
    found = (where < len(keys)) & (keys[where] == wanted) if len(keys) else np.zeros(len(wanted), bool)
    return np.where(found, counts[where] if len(keys) else 0, 0)


def assert_bracketed(keys: np.ndarray, counts: np.ndarray, lo: Sparse, hi: Sparse, what: str) -> None:
    """Every stored count between the torch counts at +eps and -eps, and nothing torch saw at +eps missing."""
    order = np.argsort(keys)
    keys, counts = keys[order], counts[order]
    assert (np.diff(keys) > 0).all(), f"{what}: repeated keys"
    lo_keys, lo_counts = lo.reduced()
    hi_keys, hi_counts = hi.reduced()
    union = np.union1d(np.union1d(keys, lo_keys), hi_keys)
    ours, low, high = at(keys, counts, union), at(lo_keys, lo_counts, union), at(hi_keys, hi_counts, union)
    bad = np.flatnonzero((ours < low) | (ours > high))
    assert not len(bad), (f"{what}: {len(bad)} of {len(union)} counts outside torch's bracket, e.g. key "
                          f"{union[bad[0]]}: ours {ours[bad[0]]}, torch {low[bad[0]]}..{high[bad[0]]}")


def _grams(windows: np.ndarray, order: int, vocab: int) -> np.ndarray:
    """Ids of the n-grams ending at p = order .. s-1 (wholly after BOS): int64 [w, s - order]."""
    s = windows.shape[1]
    gram = np.zeros((len(windows), s - order), np.int64)
    for i in range(order):
        gram = gram * vocab + windows[:, 1 + i:s - order + 1 + i]
    return gram


def _pair_counts(ids: np.ndarray, active: np.ndarray, order: int, vocab: int, ffn: int) -> Sparse:
    """(n-gram ending at p, neuron) counts over positions p >= order (n-grams wholly after BOS), as the store keys."""
    w, p, n = np.nonzero(active[:, order:])  # [e] each
    keys, counts = np.unique(_grams(ids, order, vocab)[w, p] * ffn + n, return_counts=True)
    return Sparse(keys, counts)


def ngram_occurrences(windows: np.ndarray, order: int, vocab: int) -> tuple[np.ndarray, np.ndarray]:
    """(ngram ids, counts) of every n-gram wholly after BOS, sorted by id."""
    return np.unique(_grams(windows, order, vocab), return_counts=True)
