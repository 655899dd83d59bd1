"""How many token layers a run holds (`plan_runs`): OPT-66b on an H200 splits as the collection's docs describe,
a model that fits takes one run, and a budget too small for one token layer is refused."""

import dataclasses

import pytest

import opt_jax
from analyses.collection.plan import Options, Run, make_plan, memory_use, plan_runs
from helpers import FakeDevice
from opt_jax.errors import StatsError
from opt_jax.streaming import layer_bytes

H200 = 149e9
# The 66b command of the collection's docs: streamed in groups of 4 layers, 16 batches a chunk, bf16 weights.
OPT_66B = Options(seq_len=2048, batch_size=8, offload=True, group_size=4, chunk_batches=16, examples=16)


def _fits(config, options, run, device, host):
    plan = make_plan(config, run.options(options))
    return memory_use(plan, plan.groups(options.group_size), layer_bytes(config, 2), run.options(options), device,
                      host).fits()


def test_opt_66b_on_an_h200():
    """JAX's default 75% of an H200 holds 8 token layers with every layer, and 4 runs cover the 32 first-half layers.
    The first run has every layer and the example sets; the others stop at their last token layer, hold as many as
    fit (one more does not), and keep no example sets."""
    config, device, host = opt_jax.for_size("66b"), FakeDevice(int(0.75 * H200)), 120e9
    runs = plan_runs(config, OPT_66B, layer_bytes(config, 2), device, group_size=4, host_available=host)
    assert len(runs) == 4 and len(runs[0].token_layers) == 8
    assert [l for r in runs for l in r.token_layers] == list(range(32))
    assert runs[0].max_layers is None and runs[0].examples == 16
    assert all(r.max_layers == r.token_layers[-1] + 1 and r.examples == 0 for r in runs[1:])
    assert all(_fits(config, OPT_66B, r, device, host) for r in runs)
    wider = Run(tuple(range(len(runs[0].token_layers) + 1)), None, 16)
    assert not _fits(config, OPT_66B, wider, device, host), "the first run holds as many as fit"
    for before, run in zip(runs[1:], runs[2:]):
        longer = Run((before.token_layers[-1], *run.token_layers), run.max_layers, 0)
        assert not _fits(config, OPT_66B, longer, device, host), "each later run holds as many as fit"


def test_a_model_that_fits_takes_one_run():
    config = opt_jax.for_size("125m")
    options = Options(seq_len=2048, batch_size=8)
    runs = plan_runs(config, options, layer_bytes(config, 4), FakeDevice(80 * 10**9), host_available=100e9)
    assert runs == [Run((0, 1, 2, 3, 4, 5), None, 16)]
    assert plan_runs(config, dataclasses.replace(options, token_layers=()), layer_bytes(config, 4),
                     FakeDevice(10**9)) == [Run((), None, 16)]


def test_a_budget_too_small_for_one_token_layer_is_refused():
    config = opt_jax.for_size("66b")
    with pytest.raises(StatsError, match=r"tok_act 1 layers .* need 5\d.\d GB; the budget is 50.0 GB "
                                         r"\(--device_memory_gb\). Not even one token layer per run fits"):
        plan_runs(config, OPT_66B, layer_bytes(config, 2), FakeDevice(int(H200)), budget=50 * 10**9, group_size=4,
                  host_available=120e9)
