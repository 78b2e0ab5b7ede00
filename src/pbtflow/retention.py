"""PBT-safe checkpoint retention, with bounded disk.

Tune's own retention (``CheckpointConfig(num_to_keep=...)``) deletes a trial's
checkpoints looking at that trial alone. Under PBT, other trials point at them:
an exploited member restores from its donor's checkpoint when it is next
scheduled, which may be after the donor has moved on; with score-based
retention Ray then fails the member with "Could not recover from checkpoint as
it does not exist on storage anymore". Keeping everything is safe but grows
without bound. So pbtflow tells Tune to keep all checkpoints and prunes them
itself, on the driver, with the whole population in view: a checkpoint is
deleted only when it is older than a trial's newest ``keep`` and nothing can
still restore from it (no trial's latest checkpoint, no checkpoint a restore is
reading, no donor checkpoint PBT has recorded for an exploit).
"""

from __future__ import annotations

import logging
from typing import Any, Iterable

from ray.tune import Callback

from pbtflow import ray_internals

log = logging.getLogger(__name__)
SWEEPS_PER_ROUND = 4  # sweeps while the population saves one checkpoint each


def _path(item: Any) -> str | None:
    """The storage path of a Checkpoint or a (checkpoint, metrics) training result."""
    checkpoint = getattr(item, "checkpoint", item)
    return getattr(checkpoint, "path", None)


class PBTSafeRetention(Callback):
    """Keeps each trial's newest ``keep`` checkpoints plus every checkpoint the
    population may still restore from; deletes the rest as new ones arrive."""

    _since_sweep = 0  # checkpoints since the last sweep (also for states pickled before it)

    def __init__(self, keep: int = 2, scheduler: Any = None) -> None:
        if keep < 1:
            raise ValueError(f"keep: {keep} checkpoints per trial; keep at least 1.")
        self.keep = keep
        self.scheduler = scheduler
        self.deleted = 0

    # -- what must stay ---------------------------------------------------------------
    def _pbt_donor_paths(self) -> tuple[set[str], set[str]]:
        """Checkpoints PBT recorded for its next exploits, and the trials whose
        recorded checkpoint is a save still in flight (not pruned this time)."""
        pinned, unsettled = set(), set()
        states = ray_internals.pbt_trial_states(self.scheduler)
        for trial, state in states.items():
            last = getattr(state, "last_checkpoint", None)
            if last is None:
                continue
            if hasattr(last, "resolve"):  # a save PBT scheduled, maybe not finished
                result = last.resolve(block=False)
                if result is None:
                    unsettled.add(trial.trial_id)
                    continue
                # What PBT itself does when it exploits a resolved save.
                state.last_checkpoint = result.checkpoint
                if result.metrics:
                    state.last_result = result.metrics
                last = result.checkpoint
            path = _path(last)
            if path:
                pinned.add(path)
        return pinned, unsettled

    def needed(self, trials: Iterable[Any]) -> tuple[set[str], set[str]]:
        """(paths that must stay, trial ids not to prune now)."""
        pinned, unsettled = self._pbt_donor_paths()
        for trial in trials:
            latest = trial.run_metadata.checkpoint_manager.latest_checkpoint_result
            if latest is not None and _path(latest):
                pinned.add(_path(latest))  # its own, or the donor's after an exploit
            restoring = trial.temporary_state.restoring_from
            if restoring is not None and _path(restoring):
                pinned.add(_path(restoring))
            if trial.temporary_state.saving_to is not None:
                unsettled.add(trial.trial_id)
        return pinned, unsettled

    # -- pruning ----------------------------------------------------------------------
    def prune(self, trials: list[Any]) -> int:
        """Delete what no trial can need any more; returns how many were deleted."""
        self._since_sweep = 0
        pinned, unsettled = self.needed(trials)
        deleted = 0
        for trial in trials:
            if trial.trial_id in unsettled:
                continue
            results = ray_internals.checkpoint_results(trial)  # registration order (no score attribute)
            order: list[str] = []
            for result in results:  # the same checkpoint can be registered twice
                path = _path(result)
                if path in order:
                    order.remove(path)
                if path:
                    order.append(path)
            doomed = {p for p in order[:-self.keep] if p not in pinned}
            if not doomed:
                continue
            by_path = {_path(r): r for r in results}
            ray_internals.set_checkpoint_results(trial, [r for r in results if _path(r) not in doomed])
            for path in doomed:
                checkpoint = by_path[path].checkpoint
                try:
                    checkpoint.filesystem.delete_dir(path)
                    deleted += 1
                except FileNotFoundError:
                    pass
                except OSError as exc:  # never let housekeeping fail a run
                    log.warning("pbtflow: could not delete old checkpoint %s (%s)", path, exc)
        self.deleted += deleted
        return deleted

    def on_checkpoint(self, iteration, trials, trial, checkpoint, **info):
        # A sweep looks at every trial: sweeping once per quarter of the
        # population's checkpoints keeps the cost per checkpoint flat as the
        # population grows, and each trial at most about one checkpoint over.
        self._since_sweep += 1
        if self._since_sweep * SWEEPS_PER_ROUND >= len(trials):
            self.prune(trials)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.prune(trials)
