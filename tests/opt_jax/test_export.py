"""opt_jax parameters exported as an HF checkpoint load in transformers with the same logits."""

import numpy as np
import pytest
import torch
import transformers

import hf_models
import opt_jax
from opt_jax.hf.config import from_hf_dict
from opt_jax.hf.export import export_hf


@pytest.mark.parametrize("shape", [hf_models.PRE_LN, hf_models.POST_LN_350M], ids=["pre_ln", "post_ln"])
def test_export_round_trip(shape, tmp_path):
    config = from_hf_dict(hf_models.hf_config(**shape).to_dict())
    params = opt_jax.init_params(config, seed=4)
    export_hf(config, params, str(tmp_path / "hf"))
    torch_model = transformers.OPTForCausalLM.from_pretrained(str(tmp_path / "hf")).eval()
    ids, mask = hf_models.padded_batch(config.vocab_size, [9, 5], 9, left=True)
    want, want_masks = hf_models.torch_reference(torch_model, ids, mask)
    out = opt_jax.Model(config, params).forward(ids, mask)
    real = mask.astype(bool)
    assert np.abs(np.asarray(out.logits) - want)[real].max() <= 1e-4
    np.testing.assert_array_equal(opt_jax.unpack_masks(out.masks, config.ffn_dim)[:, real], want_masks[:, real])
    reconverted = opt_jax.load(opt_jax.convert(str(tmp_path / "hf"), str(tmp_path / "back"), verbose=False))
    np.testing.assert_array_equal(reconverted.params["layers"]["ffn"]["fc2"]["weight"],
                                  np.asarray(params["layers"]["ffn"]["fc2"]["weight"]))
    assert torch.equal(torch_model.lm_head.weight, torch_model.model.decoder.embed_tokens.weight)
