"""What a run writes besides its record: snapshots `step-N/` (converted checkpoints with the tokenizer, and
`hf/` where possible) and resume states `resume/<N>/` through orbax's `CheckpointManager`."""

from __future__ import annotations

import os
import shutil

import jax
import numpy as np
import orbax.checkpoint as ocp

from opt_jax import atomic
from opt_jax import checkpoint as ckpt
from opt_jax import tokenizer as tokenization
from opt_jax.config import OPTConfig
from opt_jax.errors import TrainError
from opt_jax.hf.config import to_hf_dict
from opt_jax.hf.export import export_hf
from opt_jax.model import flatten, unflatten
from opt_jax.train.options import TrainOptions
from opt_jax.train.rundir import RECORD, RESUME_DIR
from opt_jax.train.step import State


KEEP_RESUME_STATES = 2  # the committed resume state and the one before it
SNAPSHOT_PREFIX = "step-"  # out_dir/step-N: the snapshot after step N


def list_snapshots(out_dir: str) -> list[tuple[int, str]]:
    """The complete snapshots of a run directory, (step, path) ordered by step; [] for anything else."""
    if not os.path.isdir(out_dir):
        return []
    found = []
    for name in os.listdir(out_dir):
        step = name.removeprefix(SNAPSHOT_PREFIX)
        path = os.path.join(out_dir, name)
        if name.startswith(SNAPSHOT_PREFIX) and step.isdigit() and os.path.isfile(os.path.join(path, ckpt.MANIFEST)):
            found.append((int(step), path))
    return sorted(found)


def write_snapshot(out_dir: str, state: State, config: OPTConfig, options: TrainOptions, tokenizer_dir: str,
                   record: dict) -> str:
    """Write out_dir/step-N: a converted checkpoint with the tokenizer (and hf/ where possible), atomically."""
    final = os.path.join(out_dir, f"{SNAPSHOT_PREFIX}{state.step}")
    tmp = f"{final}.tmp"
    atomic.remove(tmp)
    target = ckpt.DTYPES[ckpt.dtype_name(options.save_dtype)]
    flat = {path: np.asarray(value).astype(target) for path, value in flatten(jax.device_get(state.params)).items()}
    os.makedirs(tmp)
    _copy_tokenizer(tokenizer_dir, tmp)
    if config.positional_embeddings:
        atomic.write_json(os.path.join(tmp, "config.json"), to_hf_dict(config))
        if options.export_hf:
            hf_dtype = np.float16 if options.save_dtype == "float16" else np.float32
            export_hf(config, unflatten(flat), os.path.join(tmp, "hf"), dtype=hf_dtype)
            _copy_tokenizer(tokenizer_dir, os.path.join(tmp, "hf"))
    training = {"step": state.step, "tokens": state.tokens, "run": out_dir} | record["identity"]
    ckpt.write_checkpoint(tmp, config, flat, options.save_dtype, source=out_dir, training=training)
    return atomic.replace_dir(tmp, final)


def _copy_tokenizer(tokenizer_dir: str, directory: str) -> None:
    for path in tokenization.tokenizer_files(tokenizer_dir):
        shutil.copyfile(path, os.path.join(directory, os.path.basename(path)))


class ResumeStates:
    """The resume states of a run, `out_dir/resume/<step>/`, through orbax's `CheckpointManager`: a state is
    written to a temporary directory and finalised (renamed) only when complete, the last `KEEP_RESUME_STATES`
    are kept, and unfinished ones are cleaned up when the manager opens. `train.json` names the committed one."""

    def __init__(self, out_dir: str):
        options = ocp.CheckpointManagerOptions(max_to_keep=KEEP_RESUME_STATES, create=True,
                                               enable_async_checkpointing=False, cleanup_tmp_directories=True)
        self.manager = ocp.CheckpointManager(os.path.join(out_dir, RESUME_DIR), options=options,
                                             item_handlers=ocp.StandardCheckpointHandler())

    def __enter__(self) -> "ResumeStates":
        return self

    def __exit__(self, *exc) -> None:
        self.manager.close()

    def save(self, state: State) -> str:
        """Write (and finalise) the parameters and optimizer state after state.step; its name for train.json."""
        tree = {"params": state.params, "opt_state": state.opt_state}
        self.manager.save(state.step, args=ocp.args.StandardSave(tree), force=True)
        self.manager.wait_until_finished()
        return f"{RESUME_DIR}/{state.step}"

    def restore(self, name: str, template) -> dict:
        """The state `name` (from train.json) as arrays shaped, typed and placed like `template`."""
        step = _state_step(name)
        if step not in self.manager.all_steps():
            raise TrainError(f"{self.manager.directory}: the resume state of step {step} named in {RECORD} is "
                             "missing; pass --overwrite to start again")
        stored = [(tuple(x.shape), np.dtype(x.dtype)) for x in jax.tree.leaves(self.manager.item_metadata(step))]
        wanted = [(tuple(x.shape), np.dtype(x.dtype)) for x in jax.tree.leaves(template)]
        if stored != wanted:  # another model's or optimizer's state: refused before reading anything
            raise TrainError(f"{self.manager.directory}/{step}: does not match this run (arrays {stored[:4]}... "
                             f"stored, {wanted[:4]}... wanted)")
        return self.manager.restore(step, args=ocp.args.StandardRestore(template))

    def discard_after(self, name: str) -> None:
        """Delete the states past the committed one (written before a crash, never committed)."""
        committed = _state_step(name)
        for step in self.manager.all_steps():
            if step > committed:
                self.manager.delete(step)


def _state_step(name: str) -> int:
    """The step of a resume state's name in train.json ('resume/<step>')."""
    return int(name.rsplit("/", 1)[-1])
