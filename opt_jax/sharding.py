"""Several devices as one: a mesh of ("data", "neurons"), and where each tensor of a run lies on it.

`--mesh data=A,neurons=B` (`parse_mesh`, `make_mesh`): batches are split over `data`, and over `neurons`
every layer's weights at rest (each device holds 1/B of each), the FFN neurons' activations and counters
(each device counts 1/B of the neurons) and the attention heads. The layout is chosen so that the results are
those of data parallelism over the same number of tokens per device, bit for bit: every matrix product runs whole
on one device for some of the tokens, never for some of its outputs or some of its sum (docs/collection.md,
"Several devices", says where XLA:CPU's rounding depends on the token count).

- Weights: stored split (`layer_specs`: each stacked parameter on its largest axis that B divides; fc1 by
  row, fc2 by column), gathered one layer at a time inside the layer scan (`gathered`): a device holds 1/B
  of the weights plus the layer it is running.
- Tokens: inside a layer the hidden states, the projections, fc1 and fc2 are computed split by sequence
  position over `neurons` (and by batch row over `data`); only the token count of a product changes, as in
  data parallelism. Splitting a product by its outputs (Megatron's fc1 rows) or by its sum (Megatron's fc2
  columns, then an all-reduce) changes the order in which XLA sums: measured on the CPU, fc2 split by 96
  output rows, or by column, is 1 float32 ulp away from one device's (BENCHMARKS.md), which moves masks and
  example values.
- Heads: attention runs split by head (q, k, v resplit from tokens to heads; the context back to tokens);
  when B does not divide the heads (OPT-125m's 12 on 8), every device runs every head of its batch rows. The
  context is pinned to the heads' split before it goes back to tokens: left free, XLA's partitioner pushed the
  token split into the query blocks at neurons=8, which was exact only when a device's positions were one block.
- Neurons: fc1's output is resplit from tokens to neurons (an all-to-all) for the counters, which are split
  by neuron (`analyses.collection.statistics`).

The model (`opt_jax.model`) marks these places with `constrain`, a no-op unless a mesh with a neurons axis is
set (`jax.set_mesh`) while a function is traced: XLA's SPMD partitioner then inserts the collectives (an
all-gather of each layer's weights, all-to-alls of q, k, v, the context and fc1's output per layer). An axis
that does not divide a dimension leaves it whole. Without a mesh nothing changes. The counters need the FFN
width to divide by B: other widths are refused (`check_divisible`).
"""

from __future__ import annotations

import contextlib
import re

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from opt_jax.config import OPTConfig
from opt_jax.errors import InputError

AXES = ("data", "neurons")


def parse_mesh(text: str) -> tuple[int, int]:
    """(data, neurons) of "data=A,neurons=B" (either may be left out: 1 neurons, or data = the rest)."""
    sizes = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        match = re.fullmatch(r"(data|neurons)=(\d+)", part)
        if not match or match[1] in sizes or int(match[2]) < 1:
            raise InputError(f"--mesh {text!r}: expected data=A,neurons=B with positive integers, e.g. "
                             "data=2,neurons=4")
        sizes[match[1]] = int(match[2])
    return sizes.get("data", 0), sizes.get("neurons", 1)


def make_mesh(data: int, neurons: int, devices=None) -> Mesh:
    """The ("data", "neurons") mesh over `devices` (default: the local ones); data 0 means all the rest."""
    devices = list(jax.local_devices() if devices is None else devices)
    data = data or max(1, len(devices) // neurons)
    if data * neurons != len(devices):
        raise InputError(f"--mesh data={data},neurons={neurons} needs {data * neurons} devices; there are "
                         f"{len(devices)} local devices")
    return Mesh(np.array(devices).reshape(data, neurons), AXES, axis_types=(AxisType.Auto,) * 2)


def run_mesh(config: OPTConfig, batch_size: int, mesh: str | None = None) -> Mesh:
    """The devices a run's batches go through: every local device on ("data",), or with `mesh`
    ("data=A,neurons=B") the ("data", "neurons") mesh (`make_mesh`; FFN widths B does not divide are refused);
    `batch_size` must divide by the data axis."""
    devices = jax.local_devices()
    if mesh is None:
        out = Mesh(np.array(devices), ("data",))
    else:
        out = make_mesh(*parse_mesh(mesh), devices)
        check_divisible(config, out.shape["neurons"])
    if batch_size % out.shape["data"]:
        axis = "local devices" if mesh is None else "devices of --mesh's data axis"
        raise InputError(f"batch_size {batch_size} is not divisible by the {out.shape['data']} {axis}")
    return out


def within(mesh: Mesh | None):
    """The context a run's steps are traced and run in: with a ("data", "neurons") mesh, that mesh (the model's
    `constrain` marks then split the work); with None, none (the steps as they are without --mesh)."""
    return contextlib.nullcontext() if mesh is None else jax.set_mesh(mesh)


def check_divisible(config: OPTConfig, neurons: int) -> None:
    """Refuse a neurons axis that does not divide the FFN width (the counters' split)."""
    widths = {"ffn_dim": config.ffn_dim}
    bad = {name: width for name, width in widths.items() if width % neurons}
    if bad:
        raise InputError(f"--mesh neurons={neurons} must divide the model's " +
                         ", ".join(f"{name} {width}" for name, width in bad.items()) +
                         " (each device holds an equal share); choose a neurons axis that divides them")


def constrain(x, *axes):
    """`x` laid out as PartitionSpec(*axes) on the mesh being traced under; `x` itself when there is none or it
    has no neurons axis. An axis whose size does not divide its dimension is dropped (that dimension whole)."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or "neurons" not in mesh.axis_names:
        return x
    return jax.lax.with_sharding_constraint(x, spec(mesh, x.shape, axes))


def spec(mesh, shape: tuple[int, ...], axes: tuple) -> PartitionSpec:
    """PartitionSpec(*axes) for an array of `shape` on `mesh`, each axis that does not divide its dimension
    (or that the mesh lacks) left out."""
    sizes = dict(zip(mesh.axis_names, mesh.axis_sizes))
    return PartitionSpec(*(a if a in sizes and n % sizes[a] == 0 else None for a, n in zip(axes, shape)))


def gathered(tree):
    """`tree`'s arrays whole on every device of the mesh being traced under (`constrain`); `tree` without one."""
    return jax.tree.map(lambda a: constrain(a, *([None] * a.ndim)), tree)


def split_axis(shape: tuple[int, ...], neurons: int) -> int | None:
    """The axis a stacked parameter of this shape is stored split on (its largest after the layers' that
    `neurons` divides; the first of equals), or None: whole."""
    axes = [a for a in range(1, len(shape)) if neurons > 1 and shape[a] % neurons == 0]
    return max(axes, key=lambda a: (shape[a], -a)) if axes else None


def layer_specs(stacked, neurons: int) -> dict:
    """PartitionSpecs of stacked decoder layer params (arrays or shapes; leading axis: layers) at rest on a
    neurons axis of size `neurons` (`split_axis`)."""

    def spec(leaf):
        axis = split_axis(leaf.shape, neurons)
        return PartitionSpec(*("neurons" if a == axis else None for a in range(len(leaf.shape))))

    return jax.tree.map(spec, stacked)


def layer_shardings(mesh: Mesh, stacked):
    """NamedShardings of stacked decoder layer params (`layer_specs`) on `mesh`."""
    specs = layer_specs(stacked, mesh.shape["neurons"])
    return jax.tree.map(lambda s: NamedSharding(mesh, s), specs, is_leaf=lambda s: isinstance(s, PartitionSpec))
