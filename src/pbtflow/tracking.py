"""MLflow: one child run per trial, nested under the experiment's parent run
(``runs``), written by a Ray Tune callback on the driver (workers need no
tracking access). Metric rows are sent in batches by a background thread
(``delivery``), so logging never waits on the tracking server; ``credentials``
keeps secrets out of what is written. Reading records back is ``records``."""

from __future__ import annotations

import logging
import math
import os
import time
from pathlib import Path
from typing import Any, Mapping

from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient
from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH, MAX_TAG_VAL_LENGTH
from ray.tune import Callback
from ray.tune.utils import flatten_dict

from pbtflow import names
from pbtflow.delivery import HELPER_AFTER_S, Writer, send_or_spill
from pbtflow.lineage import trial_index
from pbtflow.pbt import get_path
from pbtflow.credentials import REDACTED, is_secret, redact, scrub

log = logging.getLogger(__name__)

MUTATED_PARAM = "mutated_hyperparameters"  # parent param: the keys PBT can change, comma-separated
# Result fields that are bookkeeping, not measurements.
_NOT_METRICS = {"timestamp", "pid", "done", "time_since_restore", "iterations_since_restore",
                "should_checkpoint", "checkpoint_dir_name"}


def _same_values(a: Mapping[str, Any], b: Mapping[str, Any], keys: list[str]) -> bool:
    for key in keys:
        x, y = as_number(a.get(key)), as_number(b.get(key))
        if x is None or y is None:
            if a.get(key) != b.get(key):
                return False
        elif not math.isclose(x, y, rel_tol=1e-9, abs_tol=1e-12):
            return False
    return True


def as_number(value: Any) -> float | None:
    """A finite float from a result value (numpy scalars included), else None."""
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)) and math.isfinite(value):
        return float(value)
    if hasattr(value, "item") and getattr(value, "size", 2) == 1:  # numpy scalars
        return as_number(value.item())
    return None


_flattened: tuple[Any, dict[str, Any]] = (None, {})


def flat_result(result: Mapping[str, Any]) -> dict[str, Any]:
    """A result's values by flat key ("env_runners/episode_return_mean"),
    its config and effective values left out. Every driver callback reads the
    same result object, so the last one flattened is kept and shared."""
    global _flattened
    cached, flat = _flattened
    if cached is not result:
        flat = flatten_dict({k: v for k, v in result.items() if k not in ("config", "effective")},
                            delimiter="/")
        _flattened = (result, flat)
    return flat


def mlflow_params(values: Mapping[str, Any]) -> list[Param]:
    """Params with every credential replaced (by key or by value)."""
    return [Param(k, (REDACTED if is_secret(k) else str(scrub(v)))[:MAX_PARAM_VAL_LENGTH])
            for k, v in values.items() if v is not None]


def _unborn(trial_id: str) -> str:
    return f"unborn:{trial_id}"  # rows of a trial whose run MLflow could not create yet


class TrialTracker(Callback):
    """One MLflow child run per trial, nested under the parent run.

    The child's MLflow step is the member's own clock (results reported so far),
    which never goes back even when PBT makes ``training_iteration`` jump. Every
    hyperparameter PBT can change is logged as ``hp/<name>`` at every step: the
    value the member trained that result with, which the tracker follows itself
    (the starting config, then each exploit's new config from the next result
    on), so that PBT's schedule survives exploits. The starting values of the
    mutated and the constant hyperparameters are the child's params."""

    def __init__(self, client: MlflowClient, experiment_id: str, parent_run_id: str,
                 mutated: list[str], constants: list[str], logged_metrics: tuple[str, ...] | None,
                 scheduler: Any = None, time_attr: str = names.TRAINING_ITERATION) -> None:
        self._client = client
        self._experiment_id = experiment_id
        self._parent_run_id = parent_run_id
        self.mutated = [k for k in mutated if not is_secret(k)]  # a credential is no metric
        self._constants = [k for k in constants if k not in self.mutated]  # params, redacted
        self.secrets: set[str] = set()  # taken out of error messages
        self.experiment_path: Path | None = None  # Ray's experiment folder (its PBT log)
        self._verify_on_start: set[str] = set()  # resumed trials, checked at their first start
        self._logged_metrics = logged_metrics
        self._scheduler = scheduler
        self._time_attr = time_attr
        self._writer: Writer | None = None
        self.run_ids: dict[str, str] = {}  # trial id -> child run id
        self._steps: dict[str, int] = {}
        self._last_iteration: dict[str, int] = {}  # per trial, the last logged
        self._restored: set[str] = set()  # trials re-running iterations already logged
        self._exploits: dict[str, int] = {}
        self._changes_seen = 0  # of the scheduler's config changes
        self.events: list[dict[str, Any]] = []  # every exploit, with the member's step
        self._events_logged: dict[str, int] = {}  # trial id -> exploits in its pbt_events.json
        self._current: dict[str, dict[str, Any]] = {}  # trial id -> mutated values in force
        self._last_logged: dict[str, dict[str, Any]] = {}  # trial id -> those of its last result
        self.ended: set[str] = set()  # trials whose child run has ended
        self.initial: dict[str, dict[str, Any]] = {}  # trial id -> starting hyperparameters
        self.hp_history: dict[str, dict[str, list[tuple[int, float]]]] = {}  # trial -> hp -> (step, value)
        self._mismatch_warned: set[tuple[str, str]] = set()

    # -- Ray Tune callback hooks ------------------------------------------------------
    def setup(self, **info):
        # Fail over to buffering quickly instead of retrying each call for minutes.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
        if self._writer is None:
            self._writer = Writer(self._client, helper_after=HELPER_AFTER_S)

    def __getstate__(self) -> dict:  # Tune pickles callbacks with the experiment
        state = dict(self.__dict__)
        state["_writer"] = None
        state["_tracking_uri"] = self._client.tracking_uri
        state["_client"] = None
        return state

    def __setstate__(self, state: dict) -> None:
        uri = state.pop("_tracking_uri", None)
        self.__dict__.update(state)
        if self._client is None:
            self._client = MlflowClient(uri)

    def on_trial_start(self, iteration, trials, trial, **info):
        self._child(trial)

    def on_trial_recover(self, iteration, trials, trial, **info):
        self._restored.add(trial.trial_id)  # Tune retries it from its latest checkpoint

    def on_trial_result(self, iteration, trials, trial, result, **info):
        try:
            self._log_result(trial, result)
        finally:
            # Exploits decided on this result take effect from the next one.
            self._collect_changes()

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._end(trial, "FINISHED")

    def on_trial_error(self, iteration, trials, trial, **info):
        self._end(trial, "FAILED")

    def on_experiment_end(self, trials, **info):
        self._writer.finishing()
        self._writer.flush()

    # -- helpers ----------------------------------------------------------------------
    def _log_result(self, trial, result: Mapping[str, Any]) -> None:
        run_id = self._child(trial) or _unborn(trial.trial_id)
        it = int(result.get(names.TRAINING_ITERATION, 0))
        if trial.trial_id in self._restored:
            # After a failure or a resume the trial repeats the iterations
            # between its checkpoint and the last logged one: keep the history
            # as if nothing happened.
            if it <= self._last_iteration.get(trial.trial_id, 0):
                return
            self._restored.discard(trial.trial_id)
        self._last_iteration[trial.trial_id] = it
        step = self._steps.get(trial.trial_id, 0)
        self._steps[trial.trial_id] = step + 1
        when = int(time.time() * 1000)
        rows = [Metric(k, v, when, step) for k, v in self._measurements(result).items()]
        self._last_logged[trial.trial_id] = dict(self._current[trial.trial_id])
        hp = self._hp_values(self._current[trial.trial_id])
        rows += [Metric(names.HP_PREFIX + k, v, when, step) for k, v in hp.items()]
        history = self.hp_history.setdefault(trial.trial_id, {})
        for key, value in hp.items():  # the data of the schedule picture
            history.setdefault(key, []).append((step, value))
        rows.append(Metric(names.EXPLOITS, float(self._exploits.get(trial.trial_id, 0)), when, step))
        rows += [Metric(names.EFFECTIVE_PREFIX + k, v, when, step)
                 for k, v in self._check_effective(trial, result).items()]
        self._writer.add(run_id, rows)

    def _child(self, trial) -> str | None:
        """The trial's child run id, created on first use; None while MLflow is
        away (its rows wait under a placeholder until the run exists)."""
        if trial.trial_id in self._verify_on_start:  # its first start after a resume
            self._verify_on_start.discard(trial.trial_id)
            self._undo_reverted(trial.trial_id, {k: get_path(trial.config, k) for k in self.mutated})
        if trial.trial_id not in self._current:  # the config it starts with
            self._current[trial.trial_id] = {k: get_path(trial.config, k) for k in self.mutated}
        run_id = self.run_ids.get(trial.trial_id)
        if run_id is None:
            initial = {k: get_path(trial.config, k) for k in self.mutated + self._constants}
            self.initial.setdefault(trial.trial_id, initial)
            try:
                run = self._client.create_run(
                    self._experiment_id,
                    run_name=f"member-{trial_index(trial.trial_id)}-{trial.trial_id}",
                    tags={names.PARENT_RUN_ID: self._parent_run_id, names.TRIAL_ID: trial.trial_id,
                          names.TRIAL_NAME: str(trial), names.ROLE: "trial"},
                )
                self._client.log_batch(run.info.run_id, params=mlflow_params(self.initial[trial.trial_id]))
            except Exception as exc:
                log.warning("pbtflow: could not create the MLflow run of trial %s (%s); its metrics "
                            "are kept until MLflow answers.", trial.trial_id, exc)
                return None
            run_id = self.run_ids[trial.trial_id] = run.info.run_id
            self._writer.adopt(_unborn(trial.trial_id), run_id)
        return run_id

    def _measurements(self, result: Mapping[str, Any]) -> dict[str, float]:
        flat = flat_result(result)
        keys = self._logged_metrics if self._logged_metrics is not None else [
            k for k in flat if k not in _NOT_METRICS]
        keys = list(keys) + [names.TRAINING_ITERATION, self._time_attr]
        out = {}
        for key in keys:
            value = as_number(flat.get(key))
            if value is not None:
                out[key] = value
        return out

    def _hp_values(self, config: Mapping[str, Any]) -> dict[str, float]:
        out = {}
        for key in self.mutated:
            value = as_number(config.get(key))
            if value is not None:
                out[key] = value
        return out

    def _check_effective(self, trial, result: Mapping[str, Any]) -> dict[str, float]:
        """The values the trainable reports it really uses (``result["effective"]``),
        with a loud warning when one differs from the hyperparameter PBT set."""
        effective = {k: as_number(v) for k, v in (result.get("effective") or {}).items()}
        effective = {k: v for k, v in effective.items() if v is not None}
        config = self._current[trial.trial_id]
        for key, used in effective.items():
            wanted = as_number(config.get(key))
            if wanted is not None and not math.isclose(used, wanted, rel_tol=1e-6, abs_tol=1e-12) \
                    and (trial.trial_id, key) not in self._mismatch_warned:
                self._mismatch_warned.add((trial.trial_id, key))
                log.warning("pbtflow: trial %s trains with %s=%s but PBT set %s=%s; the restored "
                            "checkpoint overrode the perturbed value.", trial.trial_id, key, used,
                            key, wanted)
        return effective

    def last_config(self, trial_id: str) -> dict[str, Any]:
        """The hyperparameters of the trial's last logged result: the mutated
        values it trained with then, and its constants."""
        return {**self.initial.get(trial_id, {}), **self._last_logged.get(trial_id, {})}

    def events_of(self, trial_id: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["trial_id"] == trial_id]

    def _collect_changes(self) -> None:
        """Take the scheduler's new config changes: each sets the values a
        member trains with from its next result; an exploit (it has a donor) is
        also counted and kept with the member's step it followed."""
        changes = getattr(self._scheduler, "changes", [])
        for change in changes[self._changes_seen:]:
            trial_id = change["trial_id"]
            self._current[trial_id] = {k: get_path(change["new"], k) for k in self.mutated}
            if "donor_id" in change:
                self._exploits[trial_id] = self._exploits.get(trial_id, 0) + 1
                self.events.append({**change, "member_step": self._steps.get(trial_id, 0) - 1})
        self._changes_seen = len(changes)

    def roll_back_to(self, ray_counts: Mapping[int, int]) -> int:
        """On resume, Tune restores every trial as its last saved experiment
        state has it: an exploit decided after that save never happened (the
        member trains on with its old config, and Ray's PBT log lacks it).
        Keep each member's first exploits, as many as Ray's log holds
        (``ray_counts``: trial index -> exploits), and take the values in
        force from each trial's restored config. Returns how many were dropped."""
        from pbtflow.lineage import trial_index

        kept, seen = [], {}
        for event in self.events:
            index = trial_index(event["trial_id"])
            seen[index] = seen.get(index, 0) + 1
            if seen[index] <= ray_counts.get(index, 0):
                kept.append(event)
        dropped = len(self.events) - len(kept)
        self.events[:] = kept
        self._exploits = {}
        for event in kept:
            self._exploits[event["trial_id"]] = self._exploits.get(event["trial_id"], 0) + 1
        for trial_id in list(self._current):  # the values in force after the kept exploits
            mine = [e for e in kept if e["trial_id"] == trial_id and names.UNDONE_AT not in e]
            self._current[trial_id] = dict(mine[-1]["new"]) if mine else {
                k: self.initial.get(trial_id, {}).get(k) for k in self.mutated}
        if dropped:
            self._events_logged.clear()
            log.warning("pbtflow: %d exploits decided after Tune last saved the experiment did not "
                        "survive the interruption; the record follows Tune's restored state.", dropped)
        return dropped

    def _undo_reverted(self, trial_id: str, restored: Mapping[str, Any]) -> None:
        """A resumed trial starts with the config of Tune's last saved state; if
        that is not the config its last exploit set, Tune undid that exploit
        (Ray's log still lists it). The exploit stays in the record, marked
        ``undone_at_step``: the member's last step trained with it before the
        resume; from the next step on, the restored config is in force again.
        Lineage and the best schedule leave it out (the member went back to its
        own checkpoint)."""
        mine = [e for e in self.events_of(trial_id) if names.UNDONE_AT not in e]
        last_step = self._steps.get(trial_id, 0) - 1
        while mine and not _same_values(mine[-1]["new"], restored, self.mutated):
            event = mine.pop()
            event[names.UNDONE_AT] = last_step
            self._events_logged.pop(trial_id, None)
            log.warning("pbtflow: trial %s resumes with the config from before its exploit of %s; "
                        "Tune undid that exploit, and the record marks it undone after step %d.",
                        trial_id, event["donor_id"], last_step)
        self._current[trial_id] = dict(restored)

    @property
    def kept_events(self) -> list[dict[str, Any]]:
        """The exploits the members' histories are made of (none undone)."""
        return [e for e in self.events if names.UNDONE_AT not in e]

    def log_events(self, spill_to: Path | None = None) -> None:
        """Write ``pbt_events.json`` to every child run whose exploits are not
        all in it yet, however the experiment ended; with MLflow away, keep it
        in ``spill_to`` for `pbtflow sync` (or try again at the end)."""
        for trial_id, run_id in self.run_ids.items():
            events = self.events_of(trial_id)
            if self._events_logged.get(trial_id) == len(events):
                continue
            delivery = {"run_id": run_id, "kind": "json", "data": scrub(events),
                        "path": names.EVENTS_FILE}
            try:
                send_or_spill(self._client, delivery, spill_to)
                self._events_logged[trial_id] = len(events)
            except Exception as exc:  # MLflow away: sent (or spilled) at the end
                log.warning("pbtflow: could not log the exploits of trial %s to MLflow yet (%s).",
                            trial_id, exc)

    def end_remaining(self, statuses: Mapping[str, str]) -> list[str]:
        """End the child runs Tune closed without a callback: trials it
        terminated while paused (stop_all) are FINISHED; trials left running,
        paused or pending (an interrupted experiment) are KILLED. Returns the
        interrupted trial ids."""
        self._writer.flush()
        interrupted = []
        for trial_id, run_id in self.run_ids.items():
            if trial_id in self.ended:
                continue
            status = statuses.get(trial_id, "RUNNING")
            if status in ("TERMINATED", "ERROR"):
                self._client.set_terminated(run_id, "FINISHED" if status == "TERMINATED" else "FAILED")
                self.ended.add(trial_id)
            else:
                self._client.set_terminated(run_id, "KILLED")
                interrupted.append(trial_id)
        return interrupted

    def mark_interrupted(self, trial_ids: list[str]) -> None:
        """Tune stops (and reports complete) every trial on SIGINT: their child
        runs are KILLED, not FINISHED."""
        self._writer.flush()
        for trial_id in trial_ids:
            if trial_id in self.run_ids:
                self._client.set_terminated(self.run_ids[trial_id], "KILLED")
                self.ended.discard(trial_id)

    def _reopen(self) -> None:
        """A resumed experiment continues its KILLED child runs."""
        for trial_id, run_id in self.run_ids.items():
            if self._client.get_run(run_id).info.status == "KILLED":
                self._client.update_run(run_id, status="RUNNING")
                self.ended.discard(trial_id)
            self._restored.add(trial_id)

    def _end(self, trial, status: str) -> None:
        self.ended.add(trial.trial_id)
        run_id = self._child(trial)
        if run_id is None:
            return
        self._collect_changes()
        self.log_events()
        if status == "FAILED" and getattr(trial, "error_file", None):
            try:
                message = Path(trial.error_file).read_text().strip().splitlines()[-1]
                self._client.set_tag(run_id, names.ERROR,
                                     redact(message, self.secrets)[:MAX_TAG_VAL_LENGTH])
            except Exception as exc:  # MLflow away: the status and metrics still follow
                log.warning("pbtflow: could not log the error of trial %s to MLflow (%s).",
                            trial.trial_id, exc)
        self._writer.terminate(run_id, status)  # sent after its last rows, by the writer thread

    def close(self, spill_to: Path | None = None) -> Path | None:
        """Deliver what is left (metric rows, exploits); if MLflow is away,
        spill the rows to ``spill_to``."""
        if self._writer is None:
            return None
        self._collect_changes()
        self.log_events(spill_to)
        spilled = self._writer.close(spill_to)
        if spilled:
            log.warning("pbtflow: MLflow at %s did not answer; the undelivered metrics are kept "
                        "in %s. Upload them with: pbtflow sync %s", self._client.tracking_uri,
                        spilled, spilled)
        return spilled

    # Kept with Tune's experiment state, so that a resumed experiment continues
    # the same child runs and steps.
    def get_state(self) -> dict | None:
        return {"run_ids": self.run_ids, "steps": self._steps, "exploits": self._exploits,
                "last_iteration": self._last_iteration, "events": self.events,
                "current": self._current, "events_logged": self._events_logged,
                "last_logged": self._last_logged,
                "ended": sorted(self.ended), "initial": self.initial, "hp_history": self.hp_history}

    def set_state(self, state: dict) -> None:
        self.run_ids.update(state.get("run_ids", {}))
        self.ended.update(state.get("ended", []))
        self.initial.update(state.get("initial", {}))
        self._reopen()  # Tune restores callback state only when resuming
        self._steps.update(state.get("steps", {}))
        self._last_iteration.update(state.get("last_iteration", {}))
        self._exploits.update(state.get("exploits", {}))
        self.events[:] = state.get("events", [])
        self._current.update(state.get("current", {}))
        self._last_logged.update(state.get("last_logged", {}))
        self._events_logged.update(state.get("events_logged", {}))
        self.hp_history.update(state.get("hp_history", {}))
        # The scheduler starts afresh on resume: what it holds now is not new.
        self._changes_seen = len(getattr(self._scheduler, "changes", []))
        if self.experiment_path is not None:
            from pbtflow.lineage import count_global_log

            self.roll_back_to(count_global_log(self.experiment_path))
        self._verify_on_start = set(self.run_ids)
