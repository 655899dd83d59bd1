"""The main job until trained weights ship: a random-weight OPT checkpoint, converted, loaded and run.

  python scripts/demo.py --out converted            # OPT-125m shape
  python scripts/demo.py --size 350m --layers 4     # a 350m-shaped model cut to 4 layers
"""

import os
import time

import numpy as np
from absl import app, flags

import opt_jax
from opt_jax.export import export_hf

FLAGS = flags.FLAGS
flags.DEFINE_string("out", "converted", "working directory: hf-random/ and opt-random/ go here")
flags.DEFINE_string("size", "125m", f"shape of the random model: {', '.join(opt_jax.SIZES)}")
flags.DEFINE_integer("layers", None, "keep only this many layers (default: all)")
flags.DEFINE_integer("seq_len", 128, "tokens per sequence of the demo batch")


def main(argv):
    del argv
    overrides = {"num_hidden_layers": FLAGS.layers} if FLAGS.layers else {}
    config = opt_jax.for_size(FLAGS.size, **overrides)
    hf_dir = os.path.join(FLAGS.out, "hf-random")
    if not os.path.isfile(os.path.join(hf_dir, "model.safetensors")):
        print(f"writing a random-weight OPT-{FLAGS.size}-shaped HF checkpoint to {hf_dir}")
        export_hf(config, opt_jax.init_params(config, seed=0), hf_dir)
    path = opt_jax.convert(hf_dir, os.path.join(FLAGS.out, "opt-random"))
    model = opt_jax.load(path)
    ids = np.random.default_rng(0).integers(3, config.vocab_size, (2, FLAGS.seq_len))  # [b, s]
    ids[:, 0] = config.bos_token_id
    start = time.perf_counter()
    out = model.forward(ids)
    active = opt_jax.unpack_masks(out.masks, config.ffn_dim)  # [l, b, s, f]
    elapsed = time.perf_counter() - start
    print(f"forward of {ids.size} tokens (with compilation): {elapsed:.1f}s; logits {out.logits.shape}, "
          f"masks {out.masks.shape} {out.masks.dtype}")
    for layer, frac in enumerate(active.mean(axis=(1, 2, 3))):
        print(f"layer {layer:2d}: {100 * frac:5.1f}% of (token, neuron) pairs active")
    return 0


if __name__ == "__main__":
    app.run(main)
