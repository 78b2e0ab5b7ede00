"""What ends an experiment, and what keeps it from hanging: the population
stopper (a member at its last iteration; everyone once one member reaches the
target, or when the trainable never reports the metric), Tune's variant
generator kept open while members are live, and the watches on the
trainable's first results, on stalls and on Tune's interrupt."""

from __future__ import annotations

import logging
import os
import re
import signal
import threading
import time
import uuid
import weakref
from pathlib import Path
from typing import Any, Callable, Mapping

import ray
from ray import tune as ray_tune
from ray.tune.search.basic_variant import BasicVariantGenerator
from ray.tune.utils import flatten_dict

from pbtflow import names, ray_internals


class Population(BasicVariantGenerator):
    """Tune's variant generator, still "searching" while any trial is live.
    Tune only caches a paused trial's actor for reuse while the search is not
    over; the PBT population is generated at once, so without this every
    exploit of a function trainable kills its worker process and starts a new
    one, which dominates the wall time of cheap trainables."""

    def __init__(self, *args: Any, stopper: "PopulationStopper | None" = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._stopper = stopper

    def is_finished(self) -> bool:
        # Once the stopper ends the experiment, Tune terminates paused and
        # pending trials without telling the searcher: do not wait for them.
        stopped = self._stopper is not None and self._stopper.stop_all()
        return super().is_finished() and (stopped or not ray_internals.live_trials(self))


KEEP_ITERATIONS = 100  # how far back a member may go (a donor's checkpoint, a retry)


def windowed_mean(rows: list[tuple[int, float, int]], iteration: int, mean: float, episodes: int,
                  at_least: int, keep: int = KEEP_ITERATIONS) -> float | None:
    """The mean return over a member's latest iterations that together ended
    at least ``at_least`` episodes, each iteration's mean weighted by its
    episodes, or None until the member has ended that many. ``rows``
    (iteration, mean, episodes), oldest first, is updated in place with this
    iteration's: rows at or after ``iteration`` go first (the member went back
    to an older checkpoint: a retry, a resume), and old rows once the rows up
    to ``keep`` iterations back hold the window without them (so that a
    member sent back that far still has its episodes before)."""
    while rows and rows[-1][0] >= iteration:
        rows.pop()
    if episodes:
        rows.append((iteration, mean, episodes))
    # The episodes over keep iterations back after rows[0]: once they hold the window, it goes.
    old = sum(n for i, _, n in rows[1:] if i <= iteration - keep)
    while len(rows) > 1 and old >= at_least:
        rows.pop(0)
        if rows[0][0] <= iteration - keep:
            old -= rows[0][2]
    total = weighted = 0.0
    for _, m, n in reversed(rows):
        total, weighted = total + n, weighted + m * n
        if total >= at_least:
            return weighted / total
    return None


class _Board(dict):
    """What a stopper's copies in this process learned; it goes with the last copy."""


_STOPPER_BOARDS: weakref.WeakValueDictionary[str, _Board] = weakref.WeakValueDictionary()  # by token


class PopulationStopper(ray_tune.Stopper):
    """Stops a member at ``stop_iters`` and the whole population once the best
    member's metric reaches ``stop_value``. With ``save_reaching`` (a class or
    RLlib trainable: Tune checkpoints it at its end) that member stops first,
    alone, so that Tune saves its weights as they reached the target (a
    population stop saves none, and the best member's evaluation and
    delivered policy would be an older checkpoint), and everyone else once it
    has ended (``TrainableWatch`` says so). A function trainable saves only
    when it reports a checkpoint, so its population stops at once. A metric (or time attribute) the
    trainable does not report stops everything at the first result that lacks
    it, with a clear message, unless the trainable says it is only pending
    (``metric_pending``: no RL episode has finished yet)."""

    def __init__(self, metric: str, mode: str, stop_iters: int, stop_value: float | None,
                 time_attr: str = names.TRAINING_ITERATION,
                 metric_pending: Callable[[dict], bool] | None = None,
                 save_reaching: bool = False, stop_episodes: int = 1,
                 episodes_key: str | None = None, episodes_cap: int | None = None) -> None:
        self.metric, self.mode, self.time_attr = metric, mode, time_attr
        self.save_reaching = save_reaching
        # The metric is a mean over this iteration's episodes (RLlib's return),
        # counted in ``episodes_key``, of at most ``episodes_cap`` of them (the
        # latest): the stop compares windowed_mean's instead.
        self.stop_episodes, self.episodes_key = stop_episodes, episodes_key
        self.episodes_cap = episodes_cap
        self.stop_iters, self.stop_value = stop_iters, stop_value
        self.metric_pending = metric_pending
        self._token = uuid.uuid4().hex
        self.reached: tuple[str, float] | None = None
        self.error: str | None = None

    # On resume Tune drives the experiment with the copy of the stopper saved
    # in its experiment state, while the searcher, the callbacks and pbtflow
    # hold the copy saved with the Tuner. Every copy in this process shares
    # what any of them learned (target reached, error), or Tune would stop the
    # trials while the searcher waited for them forever (the resume stall).
    # What they learned is also pickled with each copy: Tune saves its state
    # after the stopper has ended the members (TERMINATED, the searcher not
    # told), and a resume in a new process must know why they ended.
    def _board(self) -> dict[str, Any]:
        board = self.__dict__.get("_shared")
        if board is None:  # each copy holds its board, so the board lives as long as a copy does
            board = self._shared = _STOPPER_BOARDS.setdefault(self._token, _Board(reached=None, error=None))
        return board

    def __getstate__(self) -> dict[str, Any]:
        board = self._board()
        state = {k: v for k, v in self.__dict__.items() if k != "_shared"}
        return {**state, "_verdict": {"reached": board["reached"], "error": board["error"],
                                      "windows": board.get("windows")}}

    def __setstate__(self, state: dict[str, Any]) -> None:
        verdict = state.pop("_verdict", None) or {}  # none in a stopper pickled before
        self.__dict__.update(state)
        board = self._board()
        for key, value in verdict.items():
            if board.get(key) is None and value is not None:
                board[key] = value
                board.setdefault("saved", set()).add(key)
        if board["reached"] is not None:  # the process that saw it reach is gone: nothing to wait for
            board["settled"] = True

    @property
    def error_saved(self) -> bool:
        """Whether the error came with the saved experiment (a resume of one
        that had already ended on it), not from this process's members."""
        return "error" in self._board().get("saved", ())

    @property
    def reached(self) -> tuple[str, float] | None:
        return self._board()["reached"]

    @reached.setter
    def reached(self, value: tuple[str, float] | None) -> None:
        self._board()["reached"] = value

    @property
    def error(self) -> str | None:
        return self._board()["error"]

    @error.setter
    def error(self, value: str | None) -> None:
        self._board()["error"] = value

    def settle(self, trial_id: str) -> None:
        """``trial_id`` has ended: if it reached the target, the rest may stop."""
        if self.reached is not None and self.reached[0] == trial_id:
            self._board()["settled"] = True

    def __call__(self, trial_id: str, result: Mapping[str, Any]) -> bool:
        flat = flatten_dict(dict(result), delimiter="/")
        if flat.get("done") and names.TRAINING_ITERATION not in flat:
            return True  # a function that returned without reporting (see TrainableWatch)
        for key, flag in ((self.time_attr, "time_attr"), (self.metric, "metric")):
            if key not in flat and not (key == self.metric and self.metric_pending is not None
                                        and self.metric_pending(flat)):
                reported = ", ".join(sorted(k for k in flat if not k.startswith("config/"))[:12])
                self.error = (f"{flag}: the trainable never reports {key!r} (it reported: "
                              f"{reported}, ...); pass --{flag.replace('_', '-')} with one of those.")
                return True
        if self.metric not in flat:  # pending: nothing to rank or stop on yet
            return flat.get(names.TRAINING_ITERATION, 0) >= self.stop_iters
        value = flat[self.metric]
        if self.stop_value is not None and value is not None and self._windowed:
            rows = self._board().setdefault("windows", {}).setdefault(trial_id, [])
            episodes = int(flat.get(self.episodes_key) or 0)
            value = windowed_mean(rows, flat.get(names.TRAINING_ITERATION, 0), value,
                                  min(episodes, self.episodes_cap or episodes), self.stop_episodes)
        if self.stop_value is not None and value is not None:
            better = value >= self.stop_value if self.mode == "max" else value <= self.stop_value
            if better and self.reached is None:
                self.reached = (trial_id, float(value))
                if self.save_reaching:
                    return True  # this member ends first, with its checkpoint
                self._board()["settled"] = True
        return flat.get(names.TRAINING_ITERATION, 0) >= self.stop_iters

    def inherit(self, trial_id: str, donor_id: str, donor_step: int | None) -> None:
        """An exploit: ``trial_id`` continues from ``donor_id``'s checkpoint of
        iteration ``donor_step``, so the episodes it has played are the
        donor's until then (for the windowed stop return)."""
        if not self._windowed:
            return
        windows = self._board().setdefault("windows", {})
        windows[trial_id] = [row for row in windows.get(donor_id, ())
                             if donor_step is None or row[0] <= donor_step]

    @property
    def _windowed(self) -> bool:
        return self.episodes_key is not None and self.stop_episodes > 1

    def stop_all(self) -> bool:
        return self.error is not None or bool(self.reached and self._board().get("settled"))


class TrainableWatch(ray_tune.Callback):
    """What only the trainable can tell, at its first results: a trainable that
    raises before its first report (its own exception and line, not Tune's
    wrapper) or returns without reporting ends the experiment at once, through
    the stopper, instead of being retried or ending quietly. It also tells the
    stopper when the member that reached the target has ended (saved)."""

    def __init__(self, stopper: PopulationStopper, trainable: str) -> None:
        self.stopper, self.trainable = stopper, trainable

    def on_trial_recover(self, iteration, trials, trial, **info):
        # A reaching member whose final save failed is retried from an older
        # checkpoint, and would never stop again: the rest stop now, as a
        # population stop does.
        self.stopper.settle(trial.trial_id)
        self._check_failure(trial)

    def on_trial_error(self, iteration, trials, trial, **info):
        self.stopper.settle(trial.trial_id)
        self._check_failure(trial)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.stopper.settle(trial.trial_id)
        if names.TRAINING_ITERATION not in (trial.last_result or {}) and self.stopper.error is None:
            self.stopper.error = (f"trainable: {self.trainable!r} returned without reporting a result; "
                                  "report every step with tune.report({...}) (or pbtflow.checkpoint's "
                                  "run.report) inside its loop.")

    def _check_failure(self, trial) -> None:
        if names.TRAINING_ITERATION in (trial.last_result or {}) or self.stopper.error is not None:
            return  # it has trained: a later failure is retried from its checkpoint
        where, error = _user_error(getattr(trial, "error_file", None))
        self.stopper.error = (f"trainable: {self.trainable!r} raised {error} {where}before its first "
                              "result; fix it and run again.")


class StallWatch(ray_tune.Callback):
    """A stall is never silent: when no member has reported for much longer
    than the slowest iteration so far (``FACTOR`` times, at least ``FLOOR_S``),
    print every member's state and what Tune waits for; with a stall timeout,
    end the experiment as interrupted (Tune saves its state, the runs end
    KILLED and the resume hint is printed). It watches from its own thread:
    Tune can block inside one step for minutes (waiting for its searcher)."""

    FLOOR_S = 60.0
    FACTOR = 10.0
    EVERY_S = 2.0

    def __init__(self, timeout: float | None) -> None:
        self.timeout = timeout
        self.fired = False
        self._last = self._reported = 0.0
        self._slowest = 0.0
        self._trials: list | None = None
        self._done = threading.Event()

    def __getstate__(self) -> dict:  # pickled with the experiment: no thread, no event
        state = dict(self.__dict__)
        state.update(_done=None, _trials=None, _last=0.0, _reported=0.0)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._done = threading.Event()

    def setup(self, **info):
        threading.Thread(target=self._watch, name="pbtflow-stall-watch", daemon=True).start()

    def on_experiment_end(self, trials, **info):
        self._done.set()

    def on_step_begin(self, iteration, trials, **info):
        self._trials = trials

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self._last = time.monotonic()
        self._slowest = max(self._slowest, float(result.get("time_this_iter_s") or 0.0))

    def _watch(self) -> None:
        while not self._done.wait(self.EVERY_S):
            self.check()

    def check(self) -> None:
        now = time.monotonic()
        if not self._last:
            self._last = self._reported = now
        quiet = now - self._last
        limit = max(self.FLOOR_S, self.FACTOR * self._slowest)
        if quiet > limit and now - self._reported > limit:
            self._reported = now
            print(f"[pbtflow] no member has reported for {quiet:.0f} s (the slowest iteration took "
                  f"{self._slowest:.1f} s): " + "; ".join(_why_waiting(t) for t in self._trials or []),
                  flush=True)
        if self.timeout and quiet > self.timeout and not self.fired:
            self.fired = True
            print(f"[pbtflow] stall_timeout: no member has reported for {quiet:.0f} s; stopping the "
                  "experiment as interrupted.", flush=True)
            os.kill(os.getpid(), signal.SIGINT)  # Tune's own clean stop, as Ctrl-C


def _why_waiting(trial) -> str:
    """One member's state, and what Tune holds it for when it can tell."""
    status = trial.status
    if status == "PENDING":
        try:
            needs = trial.placement_group_factory.required_resources
            free = ray.available_resources()
            short = {k: v for k, v in needs.items() if free.get(k, 0) < v}
            return (f"{trial.trial_id} PENDING, waiting for resources "
                    f"({', '.join(f'{k} {v:g} needed, {free.get(k, 0):g} free' for k, v in short.items())})"
                    if short else f"{trial.trial_id} PENDING, resources free but not started")
        except Exception:  # noqa: BLE001 (a diagnosis must never fail the run)
            return f"{trial.trial_id} PENDING"
    if status == "PAUSED":
        return f"{trial.trial_id} PAUSED (by PBT, until it is scheduled again)"
    return f"{trial.trial_id} {status}"


def _user_error(error_file: str | None) -> tuple[str, str]:
    """("at file:line in function ", "ExceptionType: message") of the last
    failure in Tune's error file: the deepest frame outside Ray and pbtflow."""
    try:
        text = Path(error_file).read_text() if error_file else ""
    except OSError:
        text = ""
    last = text.split("Failure # ")[-1]
    frames = re.findall(r'File "([^"]+)", line (\d+), in (\S+)', last)
    own = [f for f in frames if "/ray/" not in f[0] and "/pbtflow/" not in f[0]]
    where = f"at {own[-1][0]}:{own[-1][1]} in {own[-1][2]} " if own else ""
    lines = [line.strip() for line in last.strip().splitlines() if line.strip()]
    error = lines[-1] if lines else "an error"
    return where, error


class InterruptWatch(logging.Handler):
    """Notices Tune's own report that SIGINT ended the experiment early: Tune
    then stops the trials like finished ones, and returns normally."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.seen = False
        self._logger = logging.getLogger("ray.tune.tune")

    def emit(self, record: logging.LogRecord) -> None:
        if "has been interrupted" in record.getMessage():
            self.seen = True

    def __enter__(self) -> "InterruptWatch":
        # It must see Tune's warning even when the console is quiet (Ray's
        # loggers at ERROR); pbtflow says "interrupted" itself, so the
        # warning is not passed on.
        self._saved = self._logger.level, self._logger.propagate
        self._logger.setLevel(logging.WARNING)
        self._logger.propagate = False
        self._logger.addHandler(self)
        return self

    def __exit__(self, *exc: Any) -> None:
        self._logger.removeHandler(self)
        self._logger.setLevel(self._saved[0])
        self._logger.propagate = self._saved[1]
