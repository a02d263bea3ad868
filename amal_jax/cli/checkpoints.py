"""Checkpoints of one training run with orbax: every epoch, atomic, restorable bit for bit.

A checkpoint holds a :class:`~amal_jax.recipes.harness.Snapshot`: the stacked
:class:`amal_jax.AmalState` of the run's seeds and their best parameters (an orbax pytree),
and a JSON part with the epoch, the best scores and epochs, the NumPy generators' states and
the epoch's metrics line (so that a line lost to a kill can be written again). orbax writes
each checkpoint into a temporary directory and renames it when complete, so a process killed
mid-write leaves the last complete checkpoint intact.
"""

from __future__ import annotations

import contextlib
import pathlib
from typing import Any

import numpy as np

from amal_jax.recipes.harness import Snapshot


def _orbax():
    try:
        import orbax.checkpoint as ocp
    except ImportError as err:  # pragma: no cover - the cli extra installs it
        raise SystemExit(
            f"amal-jax checkpoints need orbax-checkpoint: pip install 'amal_jax[cli]' ({err})."
        ) from err
    return ocp


class Checkpoints:
    """The checkpoints of one run in ``directory`` (the latest ``keep`` are kept)."""

    def __init__(self, directory: pathlib.Path, keep: int = 2):
        ocp = _orbax()
        self._ocp = ocp
        self.directory = pathlib.Path(directory).absolute()
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, enable_async_checkpointing=False, create=True
        )
        self._manager = ocp.CheckpointManager(self.directory, options=options)

    def latest(self) -> int | None:
        """The epoch count of the latest complete checkpoint, or None."""
        return self._manager.latest_step()

    def save(self, snapshot: Snapshot, extra: dict[str, Any]) -> None:
        """Saves ``snapshot`` (as checkpoint ``snapshot.epoch``) with JSON ``extra``."""
        if snapshot.history is not None:
            raise ValueError("checkpoints of a run that keeps its weight history are not kept.")
        ocp = self._ocp
        meta = {
            "epoch": int(snapshot.epoch),
            "best_score": [float(v) for v in snapshot.best_score],
            "best_epoch": [int(v) for v in snapshot.best_epoch],
            "rng_states": snapshot.rng_states,
            **extra,
        }
        tree = {"state": snapshot.state, "best_params": snapshot.best_params}
        self._manager.save(
            snapshot.epoch,
            args=ocp.args.Composite(tree=ocp.args.StandardSave(tree), meta=ocp.args.JsonSave(meta)),
            force=True,
        )
        self._manager.wait_until_finished()

    def restore(self, template: Snapshot) -> tuple[Snapshot, dict] | None:
        """The latest checkpoint as a snapshot shaped like ``template`` and its JSON part,
        or None without one."""
        step = self.latest()
        if step is None:
            return None
        ocp = self._ocp
        tree = {"state": template.state, "best_params": template.best_params}
        restored = self._manager.restore(
            step,
            args=ocp.args.Composite(
                tree=ocp.args.StandardRestore(tree), meta=ocp.args.JsonRestore()
            ),
        )
        meta = dict(restored["meta"])
        snapshot = Snapshot(
            epoch=int(meta["epoch"]),
            state=restored["tree"]["state"],
            best_params=restored["tree"]["best_params"],
            best_score=np.asarray(meta["best_score"], float),
            best_epoch=np.asarray(meta["best_epoch"], int),
            rng_states=list(meta["rng_states"]),
            history=None,
        )
        if len(snapshot.rng_states) != len(template.rng_states):
            raise SystemExit(
                f"the checkpoint in {self.directory} has {len(snapshot.rng_states)} seeds; "
                f"this run has {len(template.rng_states)}."
            )
        return snapshot, meta

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._manager.close()
