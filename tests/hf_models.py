"""Tiny random HF OPT models, saved as transformers writes them, and a torch reference for masks."""

from __future__ import annotations

import json
import os

import numpy as np
import torch
import transformers
from huggingface_hub import split_torch_state_dict_into_shards

PRE_LN = dict(num_hidden_layers=3, hidden_size=32, num_attention_heads=4, ffn_dim=64,
              vocab_size=97, max_position_embeddings=40)
POST_LN_350M = dict(num_hidden_layers=3, hidden_size=48, num_attention_heads=6, ffn_dim=96,
                    word_embed_proj_dim=16, do_layer_norm_before=False, vocab_size=97,
                    max_position_embeddings=40)


def hf_config(**fields) -> transformers.OPTConfig:
    """An OPTConfig with dropout off, so a torch model matches in eval and train alike."""
    return transformers.OPTConfig(**(fields | dict(dropout=0.0, attention_dropout=0.0)))


def random_model(config: transformers.OPTConfig, seed: int = 0) -> transformers.OPTForCausalLM:
    """An OPTForCausalLM whose every parameter (biases, norms too) is random, in eval mode."""
    torch.manual_seed(seed)
    model = transformers.OPTForCausalLM(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("layer_norm.weight"):
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            elif name.endswith("embed_tokens.weight"):
                p.normal_(0.0, 0.5)
            else:
                p.normal_(0.0, 0.2 if name.endswith("bias") else 0.15)
    return model


def save(model: transformers.OPTForCausalLM, directory: str, layout: str = "safetensors",
         max_shard_size: str | int = "30KB") -> str:
    """Save as transformers does: 'safetensors', 'sharded_safetensors', 'bin' or 'sharded_bin'."""
    os.makedirs(directory, exist_ok=True)
    if layout == "safetensors":
        model.save_pretrained(directory, max_shard_size="10GB")
    elif layout == "sharded_safetensors":
        model.save_pretrained(directory, max_shard_size=max_shard_size)
    elif layout in ("bin", "sharded_bin"):
        # transformers 5 only writes safetensors; this is the .bin layout transformers 4 wrote
        # (and the facebook/opt-* repositories hold): torch.save shards plus an index.
        model.config.save_pretrained(directory)
        state = {k: v.contiguous() for k, v in model.state_dict().items()}
        if layout == "bin":
            torch.save(state, os.path.join(directory, "pytorch_model.bin"))
        else:
            split = split_torch_state_dict_into_shards(state, filename_pattern="pytorch_model{suffix}.bin",
                                                       max_shard_size=max_shard_size)
            for filename, keys in split.filename_to_tensors.items():
                torch.save({k: state[k] for k in keys}, os.path.join(directory, filename))
            with open(os.path.join(directory, "pytorch_model.bin.index.json"), "w") as f:
                json.dump({"metadata": split.metadata, "weight_map": split.tensor_to_filename}, f, indent=2)
    else:
        raise ValueError(layout)
    return directory


def torch_reference(model: transformers.OPTForCausalLM, input_ids: np.ndarray, attention_mask: np.ndarray):
    """(logits [b, s, v], masks bool [layers, b, s, ffn]) from torch, masks captured by fc1 forward hooks."""
    captured = []
    hooks = [layer.fc1.register_forward_hook(lambda m, i, out: captured.append((out > 0).detach()))
             for layer in model.model.decoder.layers]
    try:
        with torch.no_grad():
            out = model(input_ids=torch.as_tensor(input_ids, dtype=torch.long),
                        attention_mask=torch.as_tensor(attention_mask, dtype=torch.long))
    finally:
        for h in hooks:
            h.remove()
    b, s = input_ids.shape
    masks = np.stack([c.reshape(b, s, -1).numpy() for c in captured])  # [l, b, s, f]
    return out.logits.float().numpy(), masks


def padded_batch(vocab_size: int, lengths: list[int], seq: int, left: bool, seed: int = 0):
    """Random ids with pad_token_id 1 and the matching attention mask, padded left or right."""
    rng = np.random.default_rng(seed)
    ids = np.ones((len(lengths), seq), np.int64)
    mask = np.zeros((len(lengths), seq), np.int64)
    for row, n in enumerate(lengths):
        cols = slice(seq - n, seq) if left else slice(0, n)
        ids[row, cols] = rng.integers(3, vocab_size, n)
        ids[row, cols.start] = 2  # BOS first, as OPT's tokenizer does
        mask[row, cols] = 1
    return ids, mask


def save_tokenizer(directory: str, vocab_size: int) -> None:
    """Train a tiny byte-level BPE tokenizer (OPT's special tokens, ids as in OPT) and save it beside a model.

    The same in every process: `ByteLevel.alphabet()` lists its characters in a hash set's order, which changes from
    one interpreter to the next, so its first half (the initial alphabet) is taken in sorted order."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<s>", "<pad>", "</s>", "<unk>"],
                                  initial_alphabet=sorted(pre_tokenizers.ByteLevel.alphabet())[:vocab_size // 2])
    tok.train_from_iterator(["the neurons of large language models are dead, n-gram or positional"] * 4,
                            trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="</s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>")
    fast.save_pretrained(directory)


def torch_fc1(model: transformers.OPTForCausalLM, input_ids: np.ndarray) -> np.ndarray:
    """float32 [layers, seq, ffn]: every layer's fc1 output (before the ReLU) for one unpadded window, by forward hooks."""
    captured = []
    hooks = [layer.fc1.register_forward_hook(lambda m, i, out: captured.append(out.detach().float()))
             for layer in model.model.decoder.layers]
    try:
        with torch.no_grad():
            model(input_ids=torch.as_tensor(np.asarray(input_ids)[None], dtype=torch.long))
    finally:
        for h in hooks:
            h.remove()
    return np.stack([c.reshape(len(input_ids), -1).numpy() for c in captured])  # [l, s, f]
