"""A tiny OPT model whose neurons were planted by hand, its word-level tokenizer and a corpus built for it.

Layer 0 sees only `LN(token embedding + position embedding)`: every attention output projection is zero.
Token vectors live in the first half of the hidden coordinates, position vectors in the second half;
both sum to zero and have a fixed norm, so the FFN's LayerNorm is one fixed scale `s` and every
layer-0 neuron is an exact threshold on (token, position). Layer 1 is all dead; layers 2, 3 always fire.

The corpus is a Latin square: document (a, k) has word (a + p * k) mod W at position p (after BOS), so
every position sees every word equally often: token-only neurons have a flat curve (MI 0) and the
positional neurons' curves are exact functions of position.
"""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
import torch

import hf_models

HIDDEN, FFN, LAYERS, HEADS = 64, 24, 4, 4
SEQ = 64  # window length (BOS + 63 words) = max positions
WORDS = 41  # words in the corpus (prime: every stride below is coprime)
STRIDES = (1, 2, 3, 5, 7, 11)
SPECIAL = ["<s>", "<pad>", "</s>", "<unk>"]
VOCAB = len(SPECIAL) + WORDS + 1 + 2  # + one word never in the corpus + two embedding padding rows
R_TOKEN, R_POS = 4.0, 1.0  # token vector norm; norm of each position feature pair

# Word indices (0..WORDS-1; token id = 4 + index) with planted roles.
TRIGGERS = {"t1": 0, "t2": 1, "t3": 2, "t4": 3, "t5": 4}
RARE = 5  # a word whose presence switches some positional neurons on (or off): 1 / WORDS of positions
UNSEEN = WORDS  # the word the corpus never holds

DETECTORS = {  # neuron -> (trigger words, update direction: -1 suppresses its triggers, +1 promotes them)
    0: (("t1",), -1), 1: (("t2", "t3"), -1), 2: (("t4",), +1), 3: (("t5",), -1),
}
DEAD = (4, 5, 14)  # 14: a detector of the unseen word, so never active
POSITIONAL = {  # neuron -> (type, strength)
    6: ("oscillatory", "strong"), 7: ("oscillatory", "weak"),
    8: ("both extremes", "strong"), 9: ("both extremes", "weak"),
    10: ("one extreme", "strong"), 11: ("one extreme", "weak"),
    12: ("other", "strong"), 13: ("other", "weak"),
}
ALWAYS_ON = tuple(range(15, FFN))


def token_id(word_index: int) -> int:
    return len(SPECIAL) + word_index


def word(word_index: int) -> str:
    return f"w{word_index}"


@dataclasses.dataclass
class Features:
    """Unit directions of the hidden space the neurons read."""

    trigger: dict  # word index -> direction (token half)
    sign: np.ndarray  # [hidden]: normal words carry +-M_SIGN along it
    level: np.ndarray  # [hidden]: normal words carry a value in [-M_LEVEL, M_LEVEL] along it
    cos: np.ndarray  # [hidden]: position pairs (value, partner, and their negations)
    ramp: np.ndarray
    noise: np.ndarray


M_SIGN, M_LEVEL = 1.5, 1.5


def _orthonormal(count: int, rng) -> np.ndarray:
    """`count` orthonormal vectors of the token half (first HIDDEN // 2 coordinates) summing to zero."""
    half = HIDDEN // 2
    basis = np.concatenate([np.ones((1, half)) / np.sqrt(half), rng.normal(size=(count, half))])
    q, _ = np.linalg.qr(basis.T)  # [half, count + 1]; column 0 is the all-ones direction
    out = np.zeros((count, HIDDEN))
    out[:, :half] = q[:, 1:].T
    return out


def _position_features() -> tuple[np.ndarray, dict]:
    """Rows [SEQ, hidden]: three (value, sqrt(1 - value^2)) pairs and their negations in the position half."""
    p = np.arange(SEQ)
    values = {"cos": np.cos(2 * np.pi * p / 16 + np.pi / 16), "ramp": (p - 32.5) / 33.0,
              "noise": np.random.default_rng(7).uniform(-0.95, 0.95, SEQ)}
    rows = np.zeros((SEQ, HIDDEN))
    units = {}
    for i, (name, v) in enumerate(values.items()):
        base = HIDDEN // 2 + 4 * i
        rows[:, base], rows[:, base + 1] = R_POS * v, R_POS * np.sqrt(1 - v ** 2)
        rows[:, base + 2], rows[:, base + 3] = -rows[:, base], -rows[:, base + 1]
        units[name] = np.zeros(HIDDEN)
        units[name][base], units[name][base + 2] = 1 / np.sqrt(2), -1 / np.sqrt(2)  # reads sqrt(2) * R_POS * v
    return rows, units


def _token_vectors(rng) -> tuple[np.ndarray, Features]:
    own = list(TRIGGERS.values()) + [RARE, UNSEEN]  # words with a direction of their own
    planted = _orthonormal(len(own) + 2, rng)  # those, then the sign and level directions
    trigger = {w: planted[i] for i, w in enumerate(own)}
    sign, level = planted[len(own)], planted[len(own) + 1]
    rest = _orthonormal(HIDDEN // 2 - 1, rng)  # a basis of the whole zero-sum token half
    rest = rest - (rest @ planted.T) @ planted  # minus the planted directions
    rows = np.zeros((VOCAB, HIDDEN))
    for index in range(VOCAB - len(SPECIAL)):
        row = len(SPECIAL) + index
        if index in trigger:
            rows[row] = R_TOKEN * trigger[index]
            continue
        along = M_SIGN * (1 if index % 2 else -1) * sign + M_LEVEL * np.sin(1.7 * index) * level
        noise = rng.normal(size=len(rest)) @ rest  # orthogonal to every planted direction
        rows[row] = along + noise / np.linalg.norm(noise) * np.sqrt(R_TOKEN ** 2 - along @ along)
    for row in range(len(SPECIAL)):  # specials (BOS among them) are ordinary words to the neurons
        rows[row] = rows[len(SPECIAL) + 6 + row]
    _, units = _position_features()
    return rows, Features(trigger, sign, level, units["cos"], units["ramp"], units["noise"])


def _ffn_layer0(f: Features, scale: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """fc1 weight [ffn, hidden], fc1 bias [ffn], fc2 weight [hidden, ffn] of layer 0."""
    w, b, v = np.zeros((FFN, HIDDEN)), np.zeros(FFN), np.zeros((HIDDEN, FFN))
    pos = np.sqrt(2) * R_POS  # what a position unit reads at value 1
    for n, (words, direction) in DETECTORS.items():
        w[n] = sum(f.trigger[TRIGGERS[t]] for t in words)
        b[n] = -0.5 * scale * R_TOKEN
        v[:, n] = direction * sum(f.trigger[TRIGGERS[t]] for t in words) * R_TOKEN
    b[[4, 5]] = -1.0
    w[14], b[14] = f.trigger[UNSEEN], -0.5 * scale * R_TOKEN  # detects the word the corpus lacks: dead
    rare = 2.0 * pos / R_TOKEN * f.trigger[RARE]  # outweighs any position term
    w[6], w[7] = f.cos, f.cos + rare  # oscillatory; the weak one also fires on the rare word
    w[8], w[9] = f.ramp, f.ramp + rare  # on after position 32; the weak one also on the rare word
    one = f.ramp * (M_SIGN / pos) + f.sign  # fires on + words always, on - words after position 32
    w[10], b[10] = one, scale * M_SIGN
    w[11], b[11] = one - 4 * rare, scale * M_SIGN  # ... never on the rare word
    w[12] = f.ramp * (0.8 * M_LEVEL / pos) + f.level  # the share of words above a moving level
    w[13] = f.noise * (0.8 * M_LEVEL / pos) + f.level  # ... moving at random
    b[list(ALWAYS_ON)] = 1.0
    return w, b, v


def build(directory: str) -> str:
    """Write the planted model as an HF checkpoint with its tokenizer into `directory`."""
    rng = np.random.default_rng(0)
    tokens, features = _token_vectors(rng)
    positions, _ = _position_features()
    scale = 1.0 / np.sqrt((R_TOKEN ** 2 + 6 * R_POS ** 2) / HIDDEN + 1e-5)  # LayerNorm's fixed scale
    config = hf_models.hf_config(num_hidden_layers=LAYERS, hidden_size=HIDDEN, num_attention_heads=HEADS,
                                 ffn_dim=FFN, vocab_size=VOCAB, max_position_embeddings=SEQ)
    model = hf_models.random_model(config, seed=3)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    put = lambda key, value: state[key].copy_(torch.as_tensor(np.asarray(value), dtype=torch.float32))  # noqa
    put("model.decoder.embed_tokens.weight", tokens)
    put("lm_head.weight", tokens)  # tied to embed_tokens: loading the old head would undo the line above
    put("model.decoder.embed_positions.weight", np.concatenate([np.zeros((2, HIDDEN)), positions]))
    w0, b0, v0 = _ffn_layer0(features, scale)
    for layer in range(LAYERS):
        prefix = f"model.decoder.layers.{layer}."
        put(prefix + "self_attn.out_proj.weight", np.zeros((HIDDEN, HIDDEN)))
        put(prefix + "self_attn.out_proj.bias", np.zeros(HIDDEN))
        put(prefix + "final_layer_norm.weight", np.ones(HIDDEN))
        put(prefix + "final_layer_norm.bias", np.zeros(HIDDEN))
        put(prefix + "fc2.bias", np.zeros(HIDDEN))
        if layer == 0:
            w, b, v = w0, b0, v0
        else:  # layer 1 dead, layers 2, 3 always on; no updates
            w, b, v = np.zeros((FFN, HIDDEN)), np.full(FFN, -1.0 if layer == 1 else 1.0), np.zeros((HIDDEN, FFN))
        put(prefix + "fc1.weight", w)
        put(prefix + "fc1.bias", b)
        put(prefix + "fc2.weight", v)
    model.load_state_dict(state)
    hf_models.save(model, directory, "safetensors")
    save_word_tokenizer(directory)
    return directory


def save_word_tokenizer(directory: str) -> None:
    """A real word-level tokenizer: OPT's special tokens and ids, then one token per word."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {s: i for i, s in enumerate(SPECIAL)} | {word(i): token_id(i) for i in range(WORDS + 1)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="</s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>")
    fast.save_pretrained(directory)


def documents() -> list[list[int]]:
    """The corpus as word indices: one document per (offset a, stride k), word (a + p * k) mod W at p = 1..63."""
    return [[(a + p * k) % WORDS for p in range(1, SEQ)] for k in STRIDES for a in range(WORDS)]


def write_corpus(path: str) -> str:
    """The corpus as .jsonl, one document of SEQ - 1 words per line (each one full-length window)."""
    with open(path, "w") as f:
        for doc in documents():
            f.write(json.dumps({"text": " ".join(word(i) for i in doc)}) + "\n")
    return path


def trigger_trigrams(words: tuple[str, ...]) -> set[tuple[int, ...]]:
    """Token ids of the trigrams of the corpus (after BOS) that end in one of `words`."""
    ends = {token_id(TRIGGERS[t]) for t in words}
    grams = set()
    for doc in documents():
        ids = [token_id(i) for i in doc]
        grams |= {tuple(ids[p - 2:p + 1]) for p in range(2, len(ids)) if ids[p] in ends}
    return grams


if __name__ == "__main__":  # build into a directory, for a look by hand
    import sys

    os.makedirs(sys.argv[1], exist_ok=True)
    build(sys.argv[1])
    write_corpus(os.path.join(sys.argv[1], "corpus.jsonl"))
