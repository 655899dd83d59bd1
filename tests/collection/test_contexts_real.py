"""Context activations at OPT-125m's dimensions (12 layers, 768 wide, 3072 neurons, vocab 50272, 2048-token windows):
every span of every example, top and random, against torch's fc1 by forward hooks: within float16's rounding
(2^-11 relative) plus 1e-4 absolute, the float32 difference of two implementations after 12 layers of 768 (seen up to
2.3e-5). Marked `real`: 4 GB, about four minutes (nine on a 2-core machine loaded 9)."""

import numpy as np
import pytest

import analyses
import hf_models
import opt_jax
import scale_data as sd
from analyses.collection.contexts import add_contexts
from analyses.collection.store import EXAMPLE_KINDS, context_name, example_name

pytestmark = pytest.mark.real
SEQ, BEFORE, AFTER = 2048, 32, 8


def test_opt_125m_dimensions_every_span_is_torch_fc1(tmp_path):
    model = sd.sparse_random_model(sd.OPT_125M, seed=3)
    hf_dir = hf_models.save(model, str(tmp_path / "hf"), "safetensors")
    words = sd.write_word_tokenizer(hf_dir)
    converted = opt_jax.convert(hf_dir, str(tmp_path / "converted"), verbose=False)
    docs = sd.zipf_documents(2, (2100, 2600), len(words), seed=5)  # a full window and a short one each
    corpus = sd.write_corpus(str(tmp_path / "corpus.jsonl"), docs, words)
    root = analyses.collect(converted, [corpus], str(tmp_path / "stats"), seq_len=SEQ, batch_size=2,
                            token_layers=(0,), examples=16, verbose=False)
    entry = add_contexts(root, before=BEFORE, after=AFTER, verbose=False)
    stats = analyses.open_stats(root)
    assert entry["windows"] == stats.num_windows == 4 and entry["center_deviation"] < 1e-5
    offsets = np.arange(-BEFORE, AFTER + 1)  # [w]
    references = {w: hf_models.torch_fc1(model, stats.window(w)) for w in range(stats.num_windows)}  # [l, s, f]
    checked = 0
    for layer in range(12):
        for kind in EXAMPLE_KINDS:
            window = stats.array(example_name(kind, "window"))[layer].read().result()  # [n, k]
            position = stats.array(example_name(kind, "position"))[layer].read().result()  # [n, k]
            spans = stats.array(context_name(kind))[layer].read().result().astype(np.float32)  # [n, k, w]
            for w, fc1 in references.items():
                neuron, slot = np.nonzero(window == w)  # [m] each
                at = position[neuron, slot][:, None] + offsets  # [m, w]
                inside = (at >= 0) & (at < fc1.shape[1])  # [m, w]
                want = fc1[layer][np.clip(at, 0, fc1.shape[1] - 1), neuron[:, None]]  # [m, w]
                got = spans[neuron, slot]  # [m, w]
                np.testing.assert_allclose(got[inside], want[inside], rtol=2**-11, atol=1e-4, err_msg=(layer, kind))
                assert not got[~inside].any()
                checked += len(neuron)
    assert checked > 12 * 3072 * 8, "hundreds of thousands of examples (437,912 when written)"
    # The records, as readers see them: a few neurons of the first and the last layer.
    for layer in (0, 11):
        for neuron in (0, 1, 3071):
            for kind in EXAMPLE_KINDS:
                for e in stats.examples(layer, neuron, kind):
                    start = max(1, e.position - BEFORE)
                    np.testing.assert_array_equal(e.context_tokens, e.tokens[start:e.position + AFTER + 1])
                    assert e.context_values[e.context_index] == e.value
                    np.testing.assert_allclose(e.context_values, references[e.window][layer, start:start + len(
                        e.context_tokens), neuron], rtol=2**-11, atol=1e-4)
