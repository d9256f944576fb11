"""Orbax checkpoints of a training run: the LoRA factors, the optimiser state and the data position (the step).

    OUTPUT/checkpoints/<step>/state   factors and optimiser state (float32 arrays, exact)
    OUTPUT/checkpoints/<step>/meta    JSON: step, what the run trains (model, task, LoRA shape), dataset digest,
                                      what the data order and learning rates follow from (seed, batch size,
                                      accumulation, steps, schedule)

`<step>` counts optimiser steps done. Because the data order and every random draw are functions of (seed,
step), restoring a checkpoint and continuing gives bit for bit the losses of the uninterrupted run; resuming with
other data, another seed, batch size or accumulation, or (with a decaying schedule) another step count is allowed
but warned about, since the run then no longer repeats any uninterrupted one. The arrays
are saved as flat, string-keyed trees and restored into the structure of the freshly built state, so the
checkpoint does not depend on how flax or optax nest their state classes.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

from longcat_jax.errors import CheckpointError
from longcat_jax.training.optimizer import DECAYING_SCHEDULES

logger = logging.getLogger(__name__)

CHECKPOINTS_DIR = "checkpoints"
# Keys of the meta that must match for a run to resume (they decide the shapes and meaning of the saved state),
# each with the value a checkpoint written before the key existed stands for.
RESUME_KEYS = {"model": None, "dtype": None, "quantize": "none", "task": None, "lora": None}
# The `training` keys the clips of each step follow from (`batches.BatchPlan`; the seed also draws the noise). The
# meta's "training" object holds them and `steps`; checkpoints written before it existed are not compared.
ORDER_KEYS = ("seed", "batch_size", "grad_accumulation")


def _flat(tree) -> dict[str, jax.Array]:
    return {jax.tree_util.keystr(path): leaf for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _unflat(flat: dict[str, Any], like):
    paths, treedef = jax.tree_util.tree_flatten_with_path(like)
    missing = [jax.tree_util.keystr(p) for p, _ in paths if jax.tree_util.keystr(p) not in flat]
    if missing:
        raise CheckpointError(f"the checkpoint lacks {len(missing)} arrays of this run's state, e.g. {missing[:3]}")
    return jax.tree_util.tree_unflatten(treedef, [flat[jax.tree_util.keystr(p)] for p, _ in paths])


def _warn_changed_training(step: int, saved: dict[str, Any], current: dict[str, Any], schedule: str) -> None:
    """Warns about `training` settings that differ from checkpoint `step`'s (keys it lacks are not compared):
    those of the data order, and `steps` where the learning-rate `schedule` decays over it."""
    changed = [f"'training.{key}' {current[key]} (was {saved[key]})"
               for key in ORDER_KEYS if key in saved and saved[key] != current[key]]
    if changed:
        logger.warning("Resuming checkpoint %d with %s: the clips of each step follow from the seed, batch_size x "
                       "grad_accumulation and the step (the noise from the seed and the step), so from here on the "
                       "run may repeat or skip clips of the current epoch and matches no run trained with either "
                       "setting throughout; resume with the checkpoint's values to keep its order", step,
                       ", ".join(changed))
    if "steps" in saved and saved["steps"] != current["steps"] and schedule in DECAYING_SCHEDULES:
        unfinished = step < saved["steps"]  # else the schedule it began has ended: only a new one can train on
        logger.warning("Resuming checkpoint %d with 'training.steps' %d (was %d): the %s learning-rate schedule "
                       "decays over 'training.steps', so it is reshaped from step %d on (the rate jumps to where the "
                       "new schedule is at that step)%s", step, current["steps"], saved["steps"], schedule, step,
                       f"; resume with 'training.steps' {saved['steps']} to keep it" if unfinished else "")


class TrainCheckpoints:
    """Saving and restoring the training state in `output_dir/checkpoints`, keeping the last `keep`."""

    def __init__(self, output_dir: Path, keep: int):
        self.directory = (Path(output_dir) / CHECKPOINTS_DIR).resolve()
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True),
            item_names=("state", "meta"),
        )

    @staticmethod
    def peek_latest_step(output_dir: Path) -> int | None:
        """The newest checkpoint's step in `output_dir`, None when there is none; creates and changes nothing."""
        directory = (Path(output_dir) / CHECKPOINTS_DIR).resolve()
        if not directory.is_dir():
            return None
        manager = ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(read_only=True),
                                        item_names=("state", "meta"))
        try:
            return manager.latest_step()
        finally:
            manager.close()

    def latest_step(self) -> int | None:
        """The step of the newest checkpoint, None when there is none."""
        return self._manager.latest_step()

    def save(self, step: int, factors, opt_state, meta: dict[str, Any]) -> None:
        """Writes the state after `step` optimiser steps (asynchronously; `close` waits for it)."""
        state = {"factors": _flat(factors), "opt_state": _flat(opt_state)}
        self._manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                         meta=ocp.args.JsonSave({**meta, "step": step})))

    def restore(self, step: int, factors, opt_state, meta: dict[str, Any]):
        """(factors, opt_state) of checkpoint `step`, in the structure and placement of the given ones.

        Refuses a checkpoint of another run (different model, dtype, quantization, task or LoRA shape), naming the key;
        warns where the clips, the data order or a decaying schedule's step count changed (`meta` of `loop`'s run).
        """
        saved_meta = self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta
        for key, absent in RESUME_KEYS.items():
            saved = saved_meta.get(key, absent)
            if saved != meta.get(key):
                raise CheckpointError(
                    f"checkpoint {self.directory / str(step)} was trained with {key}={saved!r}, this config has "
                    f"{meta.get(key)!r}; resume with the config it was made with, or use a new output_dir"
                )
        if saved_meta.get("clips_digest") != meta.get("clips_digest"):
            logger.warning("The prepared data changed since checkpoint %d: the resumed run trains on the new clip "
                           "list, so it will not repeat the uninterrupted run exactly", step)
        _warn_changed_training(step, saved_meta.get("training", {}), meta["training"], meta["schedule"])
        target = {"factors": _flat(factors), "opt_state": _flat(opt_state)}
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
        state = self._manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract))).state
        return _unflat(state["factors"], factors), _unflat(state["opt_state"], opt_state)

    def close(self) -> None:
        """Waits for pending saves and releases the manager."""
        self._manager.wait_until_finished()
        self._manager.close()
