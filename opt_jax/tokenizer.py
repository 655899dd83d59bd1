"""A byte-level BPE tokenizer with OPT's special tokens and ids, trained on a corpus with `tokenizers`.

Ids as in OPT: `<s>`=0, `<pad>`=1, `</s>`=2 (BOS and EOS), `<unk>`=3, then the 256 byte symbols,
then the merges; every text round-trips. Like OPT's tokenizer, encoding with special tokens
prepends `</s>`. Saved with `save_pretrained`, so `transformers.AutoTokenizer.from_pretrained(dir)`
loads it. Training is deterministic: the same documents and vocabulary size give the same files.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable

from opt_jax import atomic
from opt_jax.errors import MissingError, TokenizerError

SPECIAL_TOKENS = ("<s>", "<pad>", "</s>", "<unk>")  # ids 0, 1, 2, 3 as in OPT
BOS, PAD, UNK = "</s>", "<pad>", "<unk>"
RECORD = "training.json"  # what the tokenizer was trained on


def read_record(tokenizer_dir: str) -> dict | None:
    """The training record of a tokenizer this module trained; None for any other directory."""
    try:
        with open(os.path.join(tokenizer_dir, RECORD)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def train_tokenizer(documents: Iterable[str], vocab_size: int, out_dir: str, record: dict | None = None) -> str:
    """Train a byte-level BPE of vocab_size tokens on the documents and save it in out_dir (atomically).

    `record` (e.g. the corpus fingerprint) is saved beside it as `training.json`.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    if vocab_size < len(SPECIAL_TOKENS) + len(alphabet):
        raise TokenizerError(f"vocab_size {vocab_size} is below the {len(SPECIAL_TOKENS) + len(alphabet)} special "
                             "and byte tokens a byte-level BPE needs")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS),
                                  initial_alphabet=sorted(alphabet), show_progress=False)
    tok.train_from_iterator(documents, trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B",
                                                       special_tokens=[(BOS, tok.token_to_id(BOS))])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=BOS, pad_token=PAD,
                                   unk_token=UNK)
    tmp = f"{out_dir.rstrip(os.sep)}.tmp"
    atomic.remove(tmp)
    fast.save_pretrained(tmp)
    atomic.write_json(os.path.join(tmp, RECORD), (record or {}) | {"vocab_size": vocab_size})
    return atomic.replace_dir(tmp, out_dir)  # the old tokenizer stays until the new one is complete


def fingerprint(tokenizer_dir: str) -> str:
    """sha256 of the tokenizer's `tokenizer.json` (its vocabulary, merges and rules)."""
    path = os.path.join(tokenizer_dir, "tokenizer.json")
    if not os.path.isfile(path):
        raise MissingError(f"{tokenizer_dir}: no tokenizer.json (a fast tokenizer directory is needed)")
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def tokenizer_files(tokenizer_dir: str) -> list[str]:
    """The tokenizer's files in tokenizer_dir that a model directory should hold beside its weights."""
    from opt_jax.hf.conversion import TOKENIZER_FILES

    return [os.path.join(tokenizer_dir, name) for name in TOKENIZER_FILES
            if os.path.isfile(os.path.join(tokenizer_dir, name))]
