"""Checkpoints for your own function trainable, PBT-safe by construction.

PBT pauses members, copies a donor's checkpoint into a weaker member and
resumes it. A function trainable must therefore (1) resume at the saved step
+ 1, so that its step stays equal to Tune's ``training_iteration``, and (2)
checkpoint at the steps where PBT perturbs, or PBT copies a stale state. This
helper does both; pbtflow sets the checkpoint interval (a divisor of the
perturbation interval) and the seed before your function runs::

    from pbtflow import checkpoint

    def train(config):                       # --trainable mypackage.mymodule:train
        run = checkpoint.resume({"weights": [0.0, 0.0]})
        while True:                          # Tune stops the member
            run.state["weights"] = step_once(run.state["weights"], config["lr"], run.rng)
            run.report({"loss": loss(run.state["weights"])})

``run.state`` is what a checkpoint holds (any picklable mapping: keep it
small, it is written every checkpoint interval); ``run.step`` is the step about
to be reported (1 on a fresh start); ``run.rng`` is a NumPy generator seeded
from the experiment's seed, the member, the step and the number of exploits
behind the state: reproducible, the same whether a member was paused or ran
on, and different each time a member copies a donor.
"""

from __future__ import annotations

import copy
import pickle
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
from ray import tune

STATE_FILE = "state.pkl"


@dataclass
class _Settings:
    """Set in the worker by pbtflow's wrapper before the user's function runs."""

    interval: int = 1  # checkpoint every this many steps (always safe: 1)
    seed: int | None = None


_settings = _Settings()


def configure(interval: int = 1, seed: int | None = None) -> None:
    """Set the checkpoint interval and seed for function trainables started in
    this process (pbtflow calls it for you; call it yourself only when running
    your function under plain Ray Tune)."""
    if int(interval) < 1:
        raise ValueError(f"interval: must be at least 1, but got interval={interval}; "
                         "use a divisor of the perturbation interval.")
    _settings.interval, _settings.seed = int(interval), seed


def member_index() -> int:
    """This trial's index in the population (0, 1, ...), from its Tune trial id
    ("<experiment>_00003" -> 3); 0 outside Tune."""
    try:
        trial_id = tune.get_context().get_trial_id() or ""
    except Exception:  # not inside a Tune session
        return 0
    suffix = trial_id.rsplit("_", 1)[-1]
    return int(suffix) if suffix.isdigit() else zlib.crc32(trial_id.encode()) % 100_000


class Run:
    """A member's training state between reports; see the module docstring."""

    def __init__(self, state: dict[str, Any], step: int, member: int,
                 interval: int, seed: int | None, exploits: int = 0) -> None:
        self.state = state
        self.step = step
        self.member = member
        self.interval = interval
        self.exploits = exploits  # donor copies behind this state
        self._seed = seed
        self.rng = self._rng_at(step)
        self.resumed = step > 1

    def _rng_at(self, step: int) -> np.random.Generator:
        # Reseeded at every checkpoint boundary, so that a member paused and
        # resumed at a checkpoint draws the same numbers as one that ran on; the
        # exploit count keeps a member that copies the same donor checkpoint
        # twice from replaying the same steps.
        if self._seed is None:
            return np.random.default_rng()
        return np.random.default_rng([self._seed, self.member, step, self.exploits])

    @property
    def checkpoint_due(self) -> bool:
        """Whether this step's report carries a checkpoint."""
        return self.step % self.interval == 0

    def report(self, metrics: Mapping[str, Any]) -> None:
        """Report this step's metrics to Tune, with a checkpoint of ``state``
        when the step is a multiple of the checkpoint interval; then advance."""
        if self.checkpoint_due:
            with tempfile.TemporaryDirectory() as folder:
                with open(Path(folder) / STATE_FILE, "wb") as f:
                    pickle.dump({"step": self.step, "state": self.state, "member": self.member,
                                 "exploits": self.exploits}, f, protocol=pickle.HIGHEST_PROTOCOL)
                tune.report(dict(metrics), checkpoint=tune.Checkpoint.from_directory(folder))
            self.rng = self._rng_at(self.step + 1)
        else:
            tune.report(dict(metrics))
        self.step += 1


def load(checkpoint: "tune.Checkpoint | None") -> dict[str, Any] | None:
    """What :meth:`Run.report` saved: ``step``, ``state``, ``member`` (who
    wrote it) and ``exploits``; None without a checkpoint."""
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as folder:
        path = Path(folder) / STATE_FILE
        if not path.is_file():
            raise ValueError(f"checkpoint: {STATE_FILE} is missing, but got a checkpoint at "
                             f"{checkpoint.path} without it; write checkpoints with "
                             "pbtflow.checkpoint.Run.report.")
        with open(path, "rb") as f:
            saved = pickle.load(f)
    return {"member": None, "exploits": 0, **saved}


def resume(initial_state: Mapping[str, Any] | None = None) -> Run:
    """Start a member: from the checkpoint Tune hands over (the member's own
    after a pause, a donor's after a PBT exploit) at the saved step + 1, else
    from a copy of ``initial_state`` at step 1."""
    saved, member = load(tune.get_checkpoint()), member_index()
    if saved is None:
        return Run(copy.deepcopy(dict(initial_state or {})), 1, member, _settings.interval,
                   _settings.seed)
    exploits = int(saved["exploits"]) + (saved["member"] not in (None, member))
    return Run(saved["state"], int(saved["step"]) + 1, member, _settings.interval,
               _settings.seed, exploits)


__all__ = ["Run", "configure", "load", "member_index", "resume"]
