"""The floor's parts do the work they claim (every needed product, causal attention) on every kernel; never timings."""

import numpy as np
import pytest

from benchmarks import cpu, floor
from test_benchmark import SEQ, TINY


@pytest.fixture(scope="module")
def hf_model(tmp_path_factory):
    return cpu.build_models(TINY, str(tmp_path_factory.mktemp("floor"))).hf_model


def test_needed_products_are_all_but_the_last_fc2(hf_model):
    weights = floor.layer_weights(hf_model)
    assert floor.needed(2) == [(0, p) for p in floor.PRODUCTS] + [(1, p) for p in floor.PRODUCTS[:-1]]
    last_fc2 = TINY.hidden_size * TINY.ffn_dim
    assert floor.product_flops(weights, 10) == 2 * 10 * (cpu.decoder_matmul_params(TINY) - last_fc2)
    layer = hf_model.model.decoder.layers[1]
    assert np.shares_memory(weights[1]["fc1"], layer.fc1.weight.detach().numpy())  # views, not copies


@pytest.mark.parametrize("kernel", floor.KERNELS)
def test_products_equal_a_float64_reference(hf_model, kernel):
    weights = floor.layer_weights(hf_model)
    part = floor.Products(kernel, weights, tokens=2 * SEQ, seed=1)
    outputs = [np.asarray(o) for o in part.run()]
    inputs = {p: np.asarray(a, np.float64) for p, a in part.inputs.items()}
    expected = [inputs[p] @ weights[l][p].T.astype(np.float64) for l, p in floor.needed(len(weights))]
    if kernel != "xla":  # the kept buffers hold each product's last computation
        last = {p: e for (l, p), e in zip(floor.needed(len(weights)), expected)}
        expected = [last[p] for p in floor.PRODUCTS]
    assert len(outputs) == len(expected)
    for got, want in zip(outputs, expected):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    assert part.step([None, None]) > 0
    part.close()


def test_attention_kernels_agree_and_are_causal():
    torch_part = floor.Attention("torch", 2, batch=2, seq_len=SEQ, heads=4, head_dim=16, seed=2)
    ours = floor.Attention("xla", 2, batch=2, seq_len=SEQ, heads=4, head_dim=16, seed=2)
    t_out = [o.numpy().transpose(0, 2, 1, 3) for o in torch_part.run()]  # [b, s, h, k]
    x_out = [np.asarray(o) for o in ours.run()]
    assert len(t_out) == len(x_out) == 2
    for a, b in zip(t_out, x_out):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    q, k, v = (np.asarray(a, np.float64) for a in ours.qkv)  # [b, s, h, d]
    for layer in range(2):  # chained: each layer's output is the next layer's queries
        scores = np.einsum("bqhd,bthd->bhqt", q, k)  # [b, h, q, t]
        scores[:, :, np.triu(np.ones((SEQ, SEQ), bool), 1)] = -np.inf
        probs = np.exp(scores - scores.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        q = np.einsum("bhqt,bthd->bqhd", probs, v)  # [b, s, h, d]
        np.testing.assert_allclose(x_out[layer], q, rtol=1e-4, atol=1e-5)


def test_floor_is_the_fastest_products_plus_the_fastest_attention():
    seconds = {"floor_products_numpy": 3.0, "floor_products_torch": 3.4, "floor_products_xla": 2.9,
               "floor_attention_torch": 1.2, "floor_attention_xla": 1.4, "hf_decoder": 5.5}
    assert floor.floor_seconds(seconds) == {"floor_s": pytest.approx(4.1), "floor_products": "xla",
                                            "floor_attention": "torch"}
    with pytest.raises(ValueError, match="unknown kernel"):
        floor.Products("mkl", [], 1)


def test_attention_cost_times_both_kernels_round_by_round():
    from benchmarks.attention_cost import attention_cost

    rows = attention_cost(TINY, seq_lens=(SEQ,), tokens_per_batch=2 * SEQ, batches=3, warmup=1, log=lambda m: None)
    assert [(r["seq_len"], r["batch_size"], r["layers"], r["heads"], r["head_dim"], r["rounds"]) for r in rows] == [
        (SEQ, 2, TINY.num_hidden_layers, TINY.num_attention_heads, TINY.head_dim, 3)]
    row = rows[0]
    assert 0 < row["sdpa_fastest_s"] <= row["sdpa_s"] and 0 < row["ours_fastest_s"] <= row["ours_s"]
    assert row["ours_over_sdpa"] > 0
