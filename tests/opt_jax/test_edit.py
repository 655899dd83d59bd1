"""Edits of the FFN activations (`opt_jax.edit`) against transformers' torch OPTForCausalLM with forward hooks
changing the same neurons, for every layout of the parity tests, in float32."""

import functools

import jax
import numpy as np
import pytest
import torch

import hf_models
import opt_jax
from opt_jax.edit import Edit, neuron_mask
from opt_jax.errors import InputError
from opt_jax.loss import mean_next_token_nll

from test_parity import pair  # noqa: F401  (the parity tests' fixture: every layout, torch and ours)


def torch_edited(model, ids, mask, change, module="fc1"):
    """Logits of the torch model with a forward hook on each layer's `module` (fc1, or the activation that
    fc2 reads) replacing its output by `change(output [b, s, f], layer)`, and the mean next-token loss."""
    hooks = []
    for i, layer in enumerate(model.model.decoder.layers):
        target = layer.fc1 if module == "fc1" else layer.activation_fn
        b, s = ids.shape

        def hook(m, inputs, out, i=i):
            return change(out.reshape(b, s, -1).clone(), i).reshape(out.shape)

        hooks.append(target.register_forward_hook(hook))
    try:
        with torch.no_grad():
            out = model(input_ids=torch.as_tensor(ids, dtype=torch.long),
                        attention_mask=torch.as_tensor(mask, dtype=torch.long))
    finally:
        for h in hooks:
            h.remove()
    return out.logits.float().numpy()


def chosen_neurons(config, seed):
    rng = np.random.default_rng(seed)
    mask = rng.random((config.num_hidden_layers, config.ffn_dim)) < 0.2  # [l, f]
    mask[0, :3] = True
    return mask


def assert_close(got, want, real):
    """Within 1e-5 of the logits' scale, at the real positions."""
    got, want = np.asarray(got)[real], want[real]
    scale = np.abs(want).max()
    assert np.abs(got - want).max() <= 1e-5 * scale, (np.abs(got - want).max(), scale)


@pytest.mark.parametrize("how", ["zero", "set", "scale", "set_negative"])
def test_edited_logits_match_torch_hooks(pair, how):
    torch_model, model = pair
    c = model.config
    ids, mask = hf_models.padded_batch(c.vocab_size, [17, 9, 4], 17, left=False, seed=3)
    chosen = chosen_neurons(c, 1)  # [l, f]
    gate = torch.as_tensor(chosen)
    if how == "zero":
        edit = Edit.identity(c).zero(chosen)
        change, module = (lambda out, i: torch.where(gate[i], 0.0, out)), "fc1"
    elif how == "set":
        edit = Edit.identity(c).set(chosen, 1.5)
        change, module = (lambda out, i: torch.where(gate[i], 1.5, out)), "fc1"
    elif how == "scale":
        factors = np.random.default_rng(2).uniform(0.0, 3.0, chosen.shape).astype(np.float32)  # [l, f]
        edit = Edit.identity(c).scale_by(chosen, factors)
        f = torch.as_tensor(factors)
        change, module = (lambda out, i: torch.where(gate[i], out * f[i], out)), "fc1"
    else:  # a negative value only an edit of the ReLU output can give
        edit = Edit.identity(c).set(chosen, -0.75)
        change, module = (lambda out, i: torch.where(gate[i], -0.75, out)), "activation"
    want = torch_edited(torch_model, ids, mask, change, module)
    base = torch_edited(torch_model, ids, mask, lambda out, i: out)
    real = mask.astype(bool)
    assert np.abs(want - base)[real].max() > 1e-2, "the edit must change the reference's logits"
    out = model.forward(ids, mask, edit=edit)
    assert_close(out.logits, want, real)
    # The loss the ablation reports, from the same logits.
    loss, count = mean_next_token_nll(out.logits, ids, mask)
    want_loss, _ = mean_next_token_nll(want, ids, mask)
    assert count == sum(n - 1 for n in (17, 9, 4))
    assert abs(float(loss) - float(want_loss)) <= 1e-5 * float(want_loss)


def test_masks_are_those_of_fc1_and_later_layers_see_the_edit(pair):
    """The edited layer's own mask is its fc1's; zeroing layer 0's firing neurons changes layer 1's masks."""
    torch_model, model = pair
    c = model.config
    ids, mask = hf_models.padded_batch(c.vocab_size, [12, 7], 12, left=True, seed=4)
    base = model.forward(ids, mask)
    layer0 = np.zeros((c.num_hidden_layers, c.ffn_dim), bool)
    layer0[0] = True
    edited = model.forward(ids, mask, edit=Edit.identity(c).zero(layer0))
    np.testing.assert_array_equal(np.asarray(edited.masks[0]), np.asarray(base.masks[0]))
    assert (np.asarray(edited.masks[1]) != np.asarray(base.masks[1])).any()


def test_no_edit_and_identity_edit_are_todays_forward_bitwise(pair):
    _, model = pair
    c = model.config
    ids, mask = hf_models.padded_batch(c.vocab_size, [17, 3], 17, left=False, seed=5)
    plain = jax.jit(opt_jax.forward, static_argnums=0)(c, model.params, ids, mask.astype(bool))
    for out in (model.forward(ids, mask), model.forward(ids, mask, edit=Edit.identity(c))):
        np.testing.assert_array_equal(np.asarray(out.logits), np.asarray(plain[0]))
        np.testing.assert_array_equal(np.asarray(out.masks), np.asarray(plain[1]))


def test_one_compilation_serves_every_neuron_set(pair):
    from opt_jax.runtime import _forward

    _, model = pair
    c = model.config
    ids, mask = hf_models.padded_batch(c.vocab_size, [8], 8, left=False, seed=6)
    model.forward(ids, mask, edit=Edit.identity(c).zero([(0, 1)]))
    before = _forward._cache_size()
    outs = [model.forward(ids, mask, edit=Edit.identity(c).zero(chosen_neurons(c, s))).logits for s in range(3)]
    assert _forward._cache_size() == before
    assert not np.array_equal(np.asarray(outs[0]), np.asarray(outs[1]))


def test_a_users_function_is_the_extension_point(pair):
    """A function of (fc1, layer) -> activations: here a clipped ReLU on layer 1, checked against torch."""
    torch_model, model = pair
    c = model.config
    ids, mask = hf_models.padded_batch(c.vocab_size, [10, 10], 10, left=False, seed=7)

    def clip_layer_1(fc1, layer):
        relu = jax.numpy.maximum(fc1, 0)
        return jax.numpy.where(layer == 1, jax.numpy.minimum(relu, 0.1), relu)

    want = torch_edited(torch_model, ids, mask,
                        lambda out, i: out.clamp(max=0.1) if i == 1 else out, "activation")
    assert_close(model.forward(ids, mask, edit=clip_layer_1).logits, want, mask.astype(bool))


def test_edit_in_a_streamed_group_uses_the_models_layer_index(pair):
    """decoder_layers over layers 1.. with first_layer=1 == the whole model with the same edit."""
    _, model = pair
    c = model.config
    ids, mask = hf_models.padded_batch(c.vocab_size, [9, 5], 9, left=False, seed=8)
    mask = mask.astype(bool)
    edit = Edit.identity(c).zero(chosen_neurons(c, 3))
    x = opt_jax.embed(c, model.params, ids, mask)
    none = lambda active, i, state: state  # noqa: E731
    for group in (range(0, 1), range(1, c.num_hidden_layers)):
        layers = jax.tree.map(lambda a: a[group.start:group.stop], model.params["layers"])
        x, _ = opt_jax.decoder_layers(c, layers, x, mask, none, (), edit=edit, first_layer=group.start)
    want = model.forward(ids, mask, edit=edit).logits
    np.testing.assert_allclose(np.asarray(opt_jax.head(c, model.params, x))[mask], np.asarray(want)[mask],
                               atol=1e-5)


def test_bad_neurons_and_shapes_are_clear_errors(pair):
    _, model = pair
    c = model.config
    with pytest.raises(InputError, match=rf"neuron {c.num_hidden_layers}:0 is outside"):
        Edit.identity(c).zero([(c.num_hidden_layers, 0)])
    with pytest.raises(InputError, match="outside"):
        Edit.identity(c).zero([(0, c.ffn_dim)])
    with pytest.raises(InputError, match="shape"):
        neuron_mask(np.zeros((1, 2), bool), (c.num_hidden_layers, c.ffn_dim))
    with pytest.raises(InputError, match="values for 2 neurons"):
        Edit.identity(c).set([(0, 1), (1, 2)], [1.0, 2.0, 3.0])
    with pytest.raises(InputError, match="edit of shape"):
        model.forward(np.ones((1, 4), np.int32), edit=Edit.identity((1, 2)))
    e = Edit.identity(c).set([(0, 1), (1, 2)], [1.0, 2.0]).scale_by([(1, 2)], 0.5)
    assert e.edited().sum() == 2 and not e.is_set[1, 2] and e.scale[1, 2] == 0.5 and e.value[0, 1] == 1.0
