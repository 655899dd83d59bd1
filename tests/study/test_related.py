"""Related neurons through the weights (`analyses.neurons.related`) against float64 numpy cosines computed from a
converted checkpoint's fc1 and fc2: the lists of every neuron of the first, a middle and the last layer, the
documented order of equal scores (planted exact copies across layers), the same score seen from both ends."""

import numpy as np
import pytest

from analyses.neurons import related as rel
from opt_jax import checkpoint as ckpt
from opt_jax.config import for_size
from opt_jax.errors import InputError
from top_checks import assert_same_top

LAYERS, HIDDEN, FFN = 5, 16, 24
COPIES = [(1, 3), (1, 9), (2, 5)]  # fc1 rows that are w_out(0, 0) exactly (listed in this order)
NEGATED = (2, 7)  # the fc1 row that is -w_out(0, 0)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """A converted 5-layer model whose weights are multiples of 1/8 (every product and sum exact in float32) with
    w_out(0, 0) copied into three fc1 rows of layers 1 and 2 and negated into a fourth."""
    config = for_size("125m").replace(num_hidden_layers=LAYERS, hidden_size=HIDDEN, ffn_dim=FFN, vocab_size=50,
                                      num_attention_heads=2, word_embed_proj_dim=HIDDEN, max_position_embeddings=16)
    rng = np.random.default_rng(0)
    flat = {path: rng.integers(-16, 17, shape).astype(np.float32) / 8 for path, shape in ckpt.param_shapes(config).items()}
    fc1, fc2 = flat["layers/ffn/fc1/weight"], flat["layers/ffn/fc2/weight"]  # [L, n, d], [L, d, n]
    for l, m in COPIES:
        fc1[l, m] = fc2[0, :, 0]
    fc1[NEGATED] = -fc2[0, :, 0]
    root = str(tmp_path_factory.mktemp("related") / "model")
    ckpt.write_checkpoint(root, config, flat, "float32", "test")
    return {"root": root, "fc1": fc1.astype(np.float64), "fc2": fc2.astype(np.float64)}


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """float64 [q, r]: cosines of the rows of a [q, d] with the rows of b [r, d] (0 against a zero vector)."""
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    return (a @ b.T) / np.where(na > 0, na, np.inf)[:, None] / np.where(nb > 0, nb, np.inf)[None, :]


def reference(model, layer: int, depth: int):
    """Per direction: (candidate (layer, neuron) pairs in layer-then-neuron order, cosines [ffn, candidates])."""
    fc1, fc2 = model["fc1"], model["fc2"]
    down = [l for l in range(layer + 1, layer + depth + 1) if l < LAYERS]
    up = [l for l in range(layer - depth, layer) if l >= 0]
    out = {}
    for name, layers, query, rows in (("down", down, fc2[layer].T, lambda l: fc1[l]),
                                      ("up", up, fc1[layer], lambda l: fc2[l].T)):
        pairs = [(l, m) for l in layers for m in range(FFN)]
        scores = np.concatenate([cosines(query, rows(l)) for l in layers], axis=1) if layers else np.zeros((FFN, 0))
        out[name] = (pairs, scores)
    return out


@pytest.mark.parametrize("layer", [0, 2, 4])
def test_the_lists_are_numpys_cosines_in_order(model, layer):
    k, depth = 6, 2
    got = rel.related_neurons(model["root"], layer, depth=depth, k=k, block=7)
    ref = reference(model, layer, depth)
    for kind, direction, highest in (("excites", "down", True), ("inhibits", "down", False),
                                     ("excited_by", "up", True), ("inhibited_by", "up", False)):
        pairs, scores = ref[direction]
        links = getattr(got, kind)
        if not pairs:
            assert links.layers.shape == (FFN, 0), kind
            continue
        index = {p: i for i, p in enumerate(pairs)}
        ids = np.vectorize(lambda l, m: index[(l, m)])(links.layers, links.neurons)  # [q, k] candidate ids
        want = np.argsort(-scores if highest else scores, axis=1, kind="stable")[:, :k]
        assert_same_top(ids, links.scores, scores, want, 1e-6, highest)


def test_equal_scores_list_the_lower_layer_then_the_lower_neuron(model):
    got = rel.related_neurons(model["root"], 0, neurons=[0, 1], k=4)
    first = got.of(0)
    assert [(l, m) for l, m, _ in first["excites"][:3]] == COPIES
    assert [s for _, _, s in first["excites"][:3]] == [pytest.approx(1, abs=1e-6)] * 3
    assert len({s for _, _, s in first["excites"][:3]}) == 1, "exact copies score exactly alike"
    assert first["inhibits"][0][:2] == NEGATED and first["inhibits"][0][2] == pytest.approx(-1, abs=1e-6)
    for l, m in COPIES:
        up = rel.related_neurons(model["root"], l, neurons=[m], k=1).of(0)["excited_by"]
        assert up[0][:2] == (0, 0) and up[0][2] == pytest.approx(1, abs=1e-6)


def test_one_score_seen_from_both_ends(model):
    """The upstream score of (2, m) from (1, n) is the downstream score of (1, n) to (2, m)."""
    down = rel.related_neurons(model["root"], 1, depth=1, k=FFN)
    up = rel.related_neurons(model["root"], 2, depth=1, k=FFN)
    for n in range(FFN):
        for l, m, s in down.of(n)["excites"]:
            back = {(ll, nn): ss for ll, nn, ss in up.of(m)["excited_by"]}
            assert back[(1, n)] == pytest.approx(s, abs=1e-6)


def test_bad_arguments_are_refused_and_depth_0_lists_nothing(model):
    for kwargs, match in (({"layer": LAYERS}, "out of range"), ({"layer": 0, "neurons": [FFN]}, "neurons must"),
                          ({"layer": 0, "depth": -1}, "depth"), ({"layer": 0, "k": 0}, "k at least")):
        with pytest.raises(InputError, match=match):
            rel.related_neurons(model["root"], **kwargs)
    none = rel.related_neurons(model["root"], 2, depth=0)
    assert all(getattr(none, kind).layers.shape == (FFN, 0) for kind in rel.KINDS)
