"""``pbtflow.tune``: experiment -> (scheduler, trainable, param space,
callbacks) -> Ray Tune -> results, with every trial tracked in MLflow."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import random
import re
import shutil
import signal
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import ray
from ray import tune as ray_tune
from ray import cloudpickle
from ray.tune import ResultGrid
from ray.tune.search.basic_variant import BasicVariantGenerator
from ray.tune.logger import CSVLoggerCallback
from ray.tune.utils import flatten_dict

from pbtflow import (baselines, console, credentials, delivery, evaluation, lineage, names, policy,
                     ray_internals, record_check, records, runs, tracking, trainables)
from pbtflow.experiment import ClusterError, Experiment, ExperimentError, SettingError, TrackingError
from pbtflow.pbt import Recording, ScheduleReplay, build_scheduler, flatten_keys
from pbtflow.retention import PBTSafeRetention
from pbtflow.trainables.function import load as load_users_function

log = logging.getLogger(__name__)
DEFAULT_STORAGE = "pbtflow_results"
KEEP_CHECKPOINTS = 2  # per trial, besides those PBT may still restore from (see retention.py)


class _Population(BasicVariantGenerator):
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


_STOPPER_BOARDS: dict[str, dict[str, Any]] = {}  # stopper token -> what its copies learned


class PopulationStopper(ray_tune.Stopper):
    """Stops a member at ``stop_iters`` and the whole population once the best
    member's metric reaches ``stop_value``. A metric (or time attribute) the
    trainable does not report stops everything at the first result that lacks
    it, with a clear message, unless the trainable says it is only pending
    (``metric_pending``: no RL episode has finished yet)."""

    def __init__(self, metric: str, mode: str, stop_iters: int, stop_value: float | None,
                 time_attr: str = names.TRAINING_ITERATION,
                 metric_pending: Callable[[dict], bool] | None = None) -> None:
        self.metric, self.mode, self.time_attr = metric, mode, time_attr
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
    def _board(self) -> dict[str, Any]:
        return _STOPPER_BOARDS.setdefault(self._token, {"reached": None, "error": None})

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

    def __call__(self, trial_id: str, result: Mapping[str, Any]) -> bool:
        flat = flatten_dict(dict(result), delimiter="/")
        if flat.get("done") and names.TRAINING_ITERATION not in flat:
            return True  # a function that returned without reporting (see _TrainableWatch)
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
        if self.stop_value is not None and value is not None:
            better = value >= self.stop_value if self.mode == "max" else value <= self.stop_value
            if better and self.reached is None:
                self.reached = (trial_id, float(value))
        return flat.get(names.TRAINING_ITERATION, 0) >= self.stop_iters

    def stop_all(self) -> bool:
        return self.reached is not None or self.error is not None


class _TrainableWatch(ray_tune.Callback):
    """What only the trainable can tell, at its first results: a trainable that
    raises before its first report (its own exception and line, not Tune's
    wrapper) or returns without reporting ends the experiment at once, through
    the stopper, instead of being retried or ending quietly."""

    def __init__(self, stopper: PopulationStopper, trainable: str) -> None:
        self.stopper, self.trainable = stopper, trainable

    def on_trial_recover(self, iteration, trials, trial, **info):
        self._check_failure(trial)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._check_failure(trial)

    def on_trial_complete(self, iteration, trials, trial, **info):
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


class _StallWatch(ray_tune.Callback):
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


def _init_ray(worker_logs: bool = True) -> None:
    """Join the running cluster when there is one (``$RAY_ADDRESS``, or inside
    an Azure ML job, where Azure ML has started Ray on every node), else start
    a local Ray. On a cluster, wait for ``$PBTFLOW_RAY_NODES`` nodes (the job
    sets it to its instance_count) so the population is placed on all of them."""
    if ray.is_initialized():
        return
    if _joins_cluster():
        ray.init(address=os.environ.get("RAY_ADDRESS") or "auto", configure_logging=False,
                 log_to_driver=worker_logs)
        _wait_for_nodes()
        total, alive = ray.cluster_resources(), [n for n in ray.nodes() if n.get("Alive")]
        log.info("pbtflow: joined the Ray cluster at %s: %d nodes, %g CPUs, %g GPUs",
                 ray.get_runtime_context().gcs_address, len(alive), total.get("CPU", 0),
                 total.get("GPU", 0))
    else:
        ray.init(include_dashboard=False, configure_logging=False, log_to_driver=worker_logs)


def _wait_for_nodes() -> None:
    """Block until ``$PBTFLOW_RAY_NODES`` Ray nodes are alive, at most
    ``$PBTFLOW_RAY_NODES_TIMEOUT`` seconds (default 600): worker nodes of an
    Azure ML job join the head some time after the command starts."""
    from pbtflow.azureml import RAY_NODES_ENV, RAY_NODES_TIMEOUT_ENV

    raw, raw_timeout = os.environ.get(RAY_NODES_ENV), os.environ.get(RAY_NODES_TIMEOUT_ENV, "600")
    if not raw:
        return
    try:
        expected, timeout = int(raw), float(raw_timeout)
    except ValueError:
        expected, timeout = 0, 0.0
    if expected < 1 or not timeout > 0:
        ray.shutdown()
        raise SettingError(
            f"{RAY_NODES_ENV}: must be a whole number of nodes, 1 or more (and "
            f"{RAY_NODES_TIMEOUT_ENV} a positive number of seconds), but got {raw!r} and "
            f"{raw_timeout!r}; set them in the job's environment_variables.")
    deadline = time.monotonic() + timeout
    alive = 0
    while True:
        alive = sum(1 for node in ray.nodes() if node.get("Alive"))
        if alive >= expected:
            log.info("pbtflow: %d of %d Ray nodes alive", alive, expected)
            return
        if time.monotonic() >= deadline:
            break
        log.info("pbtflow: waiting for Ray nodes: %d of %d alive", alive, expected)
        time.sleep(min(5.0, max(0.1, deadline - time.monotonic())))
    ray.shutdown()
    raise ClusterError(
        f"{RAY_NODES_ENV}: expected {expected} Ray nodes, but got {alive} alive after {timeout:g} s; "
        f"check the worker nodes' logs, or lower resources.instance_count (and {RAY_NODES_ENV}) "
        f"to the nodes you have, or raise {RAY_NODES_TIMEOUT_ENV}.")


def _joins_cluster() -> bool:
    return bool(os.environ.get("RAY_ADDRESS") or os.environ.get("AZUREML_RUN_ID"))


def follower_rank() -> tuple[str, int] | None:
    """(variable, rank) when this process runs on a node other than the head of
    a cluster job: the head's driver tunes the population on every node."""
    from pbtflow.azureml import node_rank

    found = node_rank() if _joins_cluster() else None
    return found if found and found[1] > 0 else None


def follow_the_head(rank: tuple[str, int], poll: float = 2.0, misses: int = 3) -> None:
    """On a node that is not the head: touch neither MLflow nor the storage;
    learn the head's address from Ray, then wait until the head's Ray stops
    answering (``misses`` polls in a row) and return."""
    import socket

    try:
        ray.init(address=os.environ.get("RAY_ADDRESS") or "auto", configure_logging=False,
                 log_to_driver=False)
        address = ray.get_runtime_context().gcs_address
    except ConnectionError as exc:
        log.info("pbtflow: %s=%d: no Ray cluster to follow on this node (%s); nothing to do.",
                 *rank, exc)
        return
    finally:
        ray.shutdown()
    log.info("pbtflow: %s=%d: not the head node; the head's driver tunes the population on the "
             "whole cluster. Waiting for the head's Ray at %s to stop.", *rank, address)
    host, port = address.rsplit(":", 1)
    missed = 0
    while missed < misses:
        time.sleep(poll)
        try:
            with socket.create_connection((host, int(port)), timeout=poll):
                missed = 0
        except OSError:
            missed += 1
    log.info("pbtflow: the head's Ray at %s has stopped; this node is done.", address)


def _check_resources(experiment: Experiment, total: Mapping[str, float] | None = None) -> None:
    """A trial larger than the whole cluster would wait forever: say so instead.
    Without ``total``, ask the running Ray cluster."""
    total = ray.cluster_resources() if total is None else total
    cpus, gpus = total.get("CPU", 0), total.get("GPU", 0)
    if experiment.cpus_per_trial > cpus:
        raise ClusterError(
            f"num_env_runners: one trial needs {experiment.cpus_per_trial:g} CPUs but the Ray cluster "
            f"has {cpus:g}; lower --num-env-runners or --cpus-per-env-runner, or add nodes.")
    if experiment.gpus_per_trial > gpus:
        raise ClusterError(f"gpus_per_trial: one trial needs {experiment.gpus_per_trial:g} GPUs but "
                           f"the Ray cluster has {gpus:g}; lower --gpus-per-trial or add GPU nodes.")


MIN_FREE_MIB = 100  # below this, checkpoints would soon fill the storage disk


def _check_storage(path: Path) -> None:
    """Ray would start, then fail deep inside pyarrow: create the folder, write
    a probe file and look at the free space first."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".pbtflow-probe-") as probe:
            probe.write(b"\0" * 4096)
            probe.flush()
    except OSError as exc:
        raise SettingError(f"storage_path: {str(path)!r} cannot be created or written "
                           f"({exc.strerror or exc}); pass a writable --storage-path.") from None
    free_mib = shutil.disk_usage(path).free / 2 ** 20
    if free_mib < MIN_FREE_MIB:
        raise SettingError(f"storage_path: {str(path)!r} has {free_mib:.0f} MiB free, less than the "
                           f"{MIN_FREE_MIB} MiB checkpoints need; free some space or pass another "
                           "--storage-path.")


STATE_FILE = "pbtflow_state.pkl"  # the experiment and its parent run id, beside Tune's state


def _save_resume_state(experiment: Experiment, parent_run_id: str, path: Path) -> None:
    """The experiment's settings as plain values (not the dataclass: a setting
    added to pbtflow later would break the resume of an older experiment)."""
    (path / STATE_FILE).write_bytes(cloudpickle.dumps(
        {"settings": experiment.to_dict(), "parent_run_id": parent_run_id, "path": str(path)}))


def _load_resume_state(path: str) -> dict[str, Any]:
    state_file = Path(path).expanduser() / STATE_FILE
    if not state_file.is_file():
        raise SettingError(f"resume: {path!r} is not an interrupted pbtflow experiment (no "
                           f"{STATE_FILE}); pass the folder printed when it stopped.")
    state = cloudpickle.loads(state_file.read_bytes())
    if "settings" in state:  # settings pbtflow no longer has are dropped; new ones take defaults
        known = {f.name for f in dataclasses.fields(Experiment)}
        state["experiment"] = Experiment(**{k: v for k, v in state.pop("settings").items() if k in known})
    return state


def tune(experiment: Experiment, *, replay: Mapping[str, Any] | None = None,
         worker_logs: bool = True) -> ResultGrid:
    """Run PBT for ``experiment`` and return Ray Tune's results. Every trial is
    an MLflow child run under one parent run. With ``experiment.resume`` set,
    continue an interrupted experiment into the same runs. A seed seeds
    Python's and NumPy's global generators (Ray's PBT draws from them) for the
    run only: the caller's generator states are restored after.
    ``worker_logs``: Ray forwards what the members print (when this call
    starts Ray)."""
    states = random.getstate(), np.random.get_state()
    try:
        with _tune_environment():
            return _tune(experiment, replay, worker_logs)
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])


def _tune(experiment: Experiment, replay: Mapping[str, Any] | None, worker_logs: bool) -> ResultGrid:
    resume = _load_resume_state(experiment.resume) if experiment.resume else None
    if resume is not None:  # the interrupted experiment, with a stall timeout given now
        experiment = resume["experiment"].replace(
            stall_timeout=experiment.stall_timeout or resume["experiment"].stall_timeout)
    if experiment.seed is not None:
        random.seed(experiment.seed)
        np.random.seed(experiment.seed)
    spec = trainables.build(experiment)
    metric = experiment.metric or spec.metric
    if experiment.baseline:  # the same trainable, budget and population, without PBT
        spec = baselines.baseline_spec(spec, experiment.baseline)
        scheduler = baselines.NoPBT()
    elif replay is not None:  # one member retrains on a recorded schedule (pbtflow replay)
        scheduler = ScheduleReplay(replay["schedule_file"], spec.param_space)
        spec.param_space = scheduler.config  # the schedule's initial, complete config
        spec.points_to_evaluate = None
    else:
        explore = load_users_function(experiment.explore, "explore") if experiment.explore else None
        scheduler = build_scheduler(experiment, metric, spec.mutations, spec.repair, explore)
    mutated = flatten_keys(spec.mutations)
    constants = sorted((set(flatten_keys(experiment.initial or {})) | set(spec.hyperparameters))
                       - set(mutated))
    storage = Path(experiment.storage_path or DEFAULT_STORAGE).expanduser().resolve()
    label = re.sub(r"[^\w.-]", "_", experiment.run_label)  # a folder name: no "/" from ALE/Pong-v5
    run_name = f"{label}-{time.strftime('%Y%m%d-%H%M%S')}"
    experiment_path = Path(resume["path"]) if resume else storage / run_name

    # Fail on an unwritable storage path or an unreachable tracking server
    # before Ray starts, and on a trial larger than the cluster before a
    # parent run is opened.
    _check_storage(storage)
    runs.check_reachable(runs.resolve_tracking_uri(experiment))
    if ray.is_initialized():  # a Ray already running in this process: ask it
        _check_resources(experiment)
    elif not _joins_cluster():  # Ray would start on this machine
        _check_resources(experiment, {"CPU": os.cpu_count() or 1, "GPU": float("inf")})
    _init_ray(worker_logs)
    ray_internals.check_version()
    _check_resources(experiment)
    # The parent run is named as Ray's experiment folder: one name for both.
    with runs.parent_run(experiment, resume["parent_run_id"] if resume else None,
                             run_name=experiment_path.name) as parent:
        parent.spill_path = experiment_path / delivery.SPILL_FILE
        if resume is None:
            parent.log_experiment(experiment, {"metric": metric, tracking.MUTATED_PARAM: ",".join(
                k for k in mutated if not credentials.is_secret(k))})
            parent.client.set_tag(parent.run_id, names.STORAGE, str(experiment_path))
            if experiment.baseline:
                parent.client.set_tag(parent.run_id, names.BASELINE, experiment.baseline)
            if replay is not None:
                parent.client.set_tag(parent.run_id, names.REPLAY_OF, replay["parent_run_id"])
            tuner = _new_tuner(experiment, spec, scheduler, metric, mutated, constants, parent,
                               storage, run_name, redraw=not worker_logs)
            experiment_path.mkdir(parents=True, exist_ok=True)
            _save_resume_state(experiment, parent.run_id, experiment_path)
        else:
            lineage.keep_ray_log(experiment_path)  # the resumed Ray rewrites pbt_global.txt
            tuner = ray_tune.Tuner.restore(str(experiment_path), trainable=spec.trainable,
                                           param_space=spec.param_space, resume_unfinished=True,
                                           resume_errored=True)
        run_config = ray_internals.run_config(tuner)
        tracker = next(c for c in run_config.callbacks if isinstance(c, tracking.TrialTracker))
        tracker.secrets = credentials.secret_values(experiment.to_dict())
        tracker.experiment_path = experiment_path  # where Ray's PBT log is, for a resume
        for callback in run_config.callbacks:
            if isinstance(callback, _StallWatch):
                callback.timeout = experiment.stall_timeout
        stopper = run_config.stop
        # Tune turns SIGINT into a clean stop; make SIGTERM do the same.
        previous = signal.signal(signal.SIGTERM, lambda *_: os.kill(os.getpid(), signal.SIGINT))
        interrupt = _InterruptWatch()
        try:
            with interrupt:
                results = tuner.fit()
        finally:
            signal.signal(signal.SIGTERM, previous)
            tracker.close(spill_to=parent.spill_path)
        statuses = ray_internals.trial_statuses(results)
        tracker.end_remaining(statuses)
        if stopper.error:
            raise ExperimentError(stopper.error)
        if interrupt.seen:  # KILLED: the members that had not reached their end
            tracker.mark_interrupted([
                r.metrics.get("trial_id") for r in results
                if r.error is None and r.metrics and not r.metrics.get("done")
                and r.metrics.get(names.TRAINING_ITERATION, 0) < experiment.stop_iters])
            raise runs.TuningInterrupted(experiment_path)
        if results.num_errors == len(results):
            raise RuntimeError(f"every trial failed; first error: {results.errors[0]}")
        best_trial, value, checkpoint = _best(results, metric, experiment.mode)
        evaluations = _evaluate(experiment, spec, results, metric, replay)
        events = tracker.kept_events
        try:
            if evaluations:  # the best by evaluation is the experiment's best
                parent.log_evaluations(evaluations, tracker.run_ids, metric)
                parent.deliver("tag", key=names.BEST_BY_TRAINING, value=best_trial)
                by_training, best = best_trial, evaluations[0]
                best_trial, value, checkpoint = best.trial_id, best.training_value, best.checkpoint
                log.info("pbtflow: best by evaluation: %s, return %.4g +- %.3g over %d greedy episodes%s",
                         best_trial, best.mean, best.std, len(best.returns),
                         "" if by_training == best_trial else f" (best by training return: {by_training})")
            if best_trial:
                parent.log_best(best_trial, metric, value, tracker.last_config(best_trial))
            lineage_record = lineage.build_lineage(events, tracker.initial)
            runs.log_lineage(parent, lineage_record,
                             lineage.best_schedule(events, tracker.initial, best_trial),
                             checkpoint if experiment.upload_checkpoint else None)
            _log_plots(experiment, results, lineage_record, experiment_path, parent,
                       tracker.hp_history, tracker.mutated)
            if experiment.is_rllib and checkpoint:
                _log_policy(experiment, parent, checkpoint)
        except Exception as exc:  # MLflow away at the very end: the results are on disk
            log.warning("pbtflow: could not log the summary to MLflow (%s); the results stay in %s.",
                        exc, experiment_path)
        if replay is None:
            _check_record(parent, experiment_path)
        log.info("best trial %s: %s = %s", best_trial or "-", metric, value)
        log.info("MLflow parent run %s: %s", parent.run_id, parent.where())
    return results


def _log_policy(experiment: Experiment, parent: runs.ParentRun, checkpoint: str) -> None:
    """The best member's policy as the parent run's MLflow model (and a
    registered version when asked); a failure leaves the record as it is."""
    try:
        info = policy.log_policy(parent.client.tracking_uri, parent.run_id, checkpoint, experiment.env,
                                 evaluation.evaluation_seed(experiment.seed), experiment.register_model)
    except Exception as exc:
        log.warning("pbtflow: could not log the best policy as an MLflow model (%s: %s); its "
                    "checkpoint stays in %s.", type(exc).__name__, exc, checkpoint)
        return
    if info is not None:
        registered = (f", registered as {experiment.register_model!r} version "
                      f"{info.registered_model_version}" if experiment.register_model else "")
        log.info("pbtflow: the best policy is the MLflow model %s%s; load it with "
                 "mlflow.pyfunc.load_model(%r).", info.model_uri, registered, info.model_uri)


def _ranked(results: ResultGrid, metric: str, mode: str) -> list[tuple[float, Any]]:
    """(last metric value, result) of every member that reported the metric, best first."""
    scored = []
    for result in results:
        value = flatten_dict(dict(result.metrics or {}), delimiter="/").get(metric)
        number = tracking.as_number(value)
        if number is not None:
            scored.append((number, result))
    return sorted(scored, key=lambda item: -item[0] if mode == "max" else item[0])


def _best(results: ResultGrid, metric: str, mode: str) -> tuple[str, float | None, str | None]:
    """(trial id, last metric value, checkpoint path) of the best member by
    its last result; ("", None, None) if no member reported the metric."""
    ranked = _ranked(results, metric, mode)
    if not ranked:
        log.warning("pbtflow: no member reported %s, so there is no best member.", metric)
        return "", None, None
    value, best = ranked[0]
    return (best.metrics.get("trial_id", ""), value,
            best.checkpoint.path if best.checkpoint else None)


def _evaluate(experiment: Experiment, spec, results: ResultGrid, metric: str,
              replay: Mapping[str, Any] | None) -> list:
    """The top members by training metric (``eval_top``), each playing
    ``eval_episodes`` greedy episodes on fresh seeds, best evaluation first;
    [] when off, for a replay (one member), or when interrupted or failed:
    the tuning's results and record stand."""
    if not (experiment.is_rllib and experiment.eval_top) or replay is not None:
        return []
    top = [(r.metrics["trial_id"], value, r) for value, r in _ranked(results, metric, experiment.mode)
           if r.checkpoint is not None and r.error is None][:experiment.eval_top]
    if not top:
        return []
    log.info("pbtflow: evaluating the top %d members: %d greedy episodes each, on seeds no member "
             "trained on", len(top), experiment.eval_episodes)
    # Ctrl-C or SIGTERM (as during tuning) ends the evaluation, not the summary.
    previous = signal.signal(signal.SIGTERM, lambda *_: os.kill(os.getpid(), signal.SIGINT))
    try:
        return evaluation.evaluate(top, spec.trainable, experiment.eval_episodes,
                                   evaluation.evaluation_seed(experiment.seed),
                                   experiment.cpus_per_trial_process)
    except (Exception, KeyboardInterrupt) as exc:  # the tuned members and their record stand
        log.warning("pbtflow: the evaluation %s; the best member is the best by training return.",
                    "was interrupted" if isinstance(exc, KeyboardInterrupt)
                    else f"failed ({type(exc).__name__}: {exc})")
        return []
    finally:
        signal.signal(signal.SIGTERM, previous)


def _check_record(parent: runs.ParentRun, experiment_path: Path) -> list[str] | None:
    """Reconcile the MLflow record with Ray's PBT log and tag the parent run;
    a differing record is a loud warning, the run itself stands."""
    try:
        differences = record_check.check(parent.client.tracking_uri, parent.run_id,
                                         str(experiment_path))
    except Exception as exc:  # MLflow away: `pbtflow check` can run it later
        log.warning("pbtflow: could not check the record (%s); run later: pbtflow check --run-id %s",
                    exc, parent.run_id)
        return None
    if differences:
        log.warning("pbtflow: WARNING: the MLflow record differs from Ray's PBT log in %d places:\n  %s",
                    len(differences), "\n  ".join(differences[:20]))
    else:
        log.info("pbtflow: record check: complete (MLflow agrees with Ray's PBT log)")
    return differences


def _new_tuner(experiment, spec, scheduler, metric, mutated, constants, parent, storage,
               run_name, redraw: bool = True) -> ray_tune.Tuner:
    tracker = tracking.TrialTracker(parent.client, parent.experiment_id, parent.run_id,
                                    mutated, constants, spec.logged_metrics, scheduler,
                                    experiment.time_attr)
    stopper = PopulationStopper(metric, experiment.mode, experiment.stop_iters,
                                experiment.stop_return, experiment.time_attr, spec.metric_pending)
    if isinstance(scheduler, Recording):
        scheduler.stopper = stopper
    return ray_tune.Tuner(
        spec.trainable,
        param_space=spec.param_space,
        tune_config=ray_tune.TuneConfig(
            scheduler=scheduler,
            num_samples=1 if isinstance(scheduler, ScheduleReplay) else experiment.population,
            reuse_actors=spec.reuse_actors,
            search_alg=_Population(stopper=stopper, random_state=experiment.seed,
                                   points_to_evaluate=spec.points_to_evaluate),
        ),
        run_config=ray_tune.RunConfig(
            name=run_name,
            storage_path=str(storage),
            stop=stopper,
            callbacks=[tracker, console.Progress(metric, experiment.mode, scheduler, mutated,
                                                 redraw=redraw),
                       CSVLoggerCallback(),
                       _TrainableWatch(stopper, experiment.trainable),
                       _StallWatch(experiment.stall_timeout),
                       PBTSafeRetention(keep=KEEP_CHECKPOINTS, scheduler=scheduler)],
            checkpoint_config=_checkpoint_config(experiment, spec),
            failure_config=ray_tune.FailureConfig(max_failures=experiment.max_failures),
            verbose=0,  # console.Progress prints a compact table instead
        ),
    )


class _InterruptWatch(logging.Handler):
    """Notices Tune's own report that SIGINT ended the experiment early: Tune
    then stops the trials like finished ones, and returns normally."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.seen = False
        self._logger = logging.getLogger("ray.tune.tune")

    def emit(self, record: logging.LogRecord) -> None:
        if "has been interrupted" in record.getMessage():
            self.seen = True

    def __enter__(self) -> "_InterruptWatch":
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


# Settings by environment variable, set while pbtflow.tune runs and restored
# after: Tune's result loggers without JSON and TensorBoard (the JSON logger
# copies a trial's result.json back from storage whenever the trial restarts,
# after every PBT pause, truncating the rows not yet synced, and both cost
# time; progress.csv keeps every row and is what Result.metrics_dataframe
# reads); no strict metric check (PopulationStopper reports a missing metric in
# one sentence; Tune's check would raise first with the whole result dumped);
# Tune's console output off (pbtflow prints its own progress); no MLflow
# progress bars for the record check's downloads.
TUNE_ENVIRONMENT = {"TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1", "TUNE_DISABLE_STRICT_METRIC_CHECKING": "1",
                    "RAY_AIR_NEW_OUTPUT": "0", "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}


@contextlib.contextmanager
def _tune_environment():
    previous = {key: os.environ.get(key) for key in TUNE_ENVIRONMENT}
    os.environ.update(TUNE_ENVIRONMENT)
    try:
        yield
    finally:
        for key, value in previous.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _checkpoint_config(experiment: Experiment, spec: trainables.TrainableSpec) -> ray_tune.CheckpointConfig:
    # Tune keeps every checkpoint (num_to_keep=None): its per-trial retention can
    # delete a donor checkpoint PBT still has to restore from. PBTSafeRetention
    # prunes instead, with the whole population in view.
    if spec.function:  # it reports its own checkpoints (pbtflow.checkpoint)
        return ray_tune.CheckpointConfig(num_to_keep=None)
    return ray_tune.CheckpointConfig(
        checkpoint_frequency=experiment.perturbation_checkpoint_interval,
        checkpoint_at_end=True,
        num_to_keep=None,
    )


def _log_plots(experiment: Experiment, results: ResultGrid, lineage_record: Mapping[str, Any],
               experiment_path: Path, parent: runs.ParentRun, schedules: Mapping[str, Any],
               mutated: list[str]) -> None:
    """Pictures of the run next to its results and in the parent run; a failure
    here only warns, the run itself is recorded already."""
    from pbtflow import plots  # matplotlib, only when there is something to draw

    title = experiment.trainable + (f", {experiment.baseline} baseline (no PBT)"
                                    if experiment.baseline else ", PBT")
    try:
        paths = plots.write(experiment.trainable, results, lineage_record, schedules, mutated,
                            experiment_path / "plots", title)
        if paths:
            parent.log_artifacts(paths)
            log.info("pictures: %s", ", ".join(str(p) for p in paths))
    except Exception as exc:  # noqa: BLE001
        log.warning("pbtflow: could not draw the pictures (%s: %s)", type(exc).__name__, exc)


def replay(run_id: str, tracking_uri: str | None = None) -> tuple[ResultGrid, float | None, float | None]:
    """Retrain one member on the best schedule of parent run ``run_id``, as a new
    parent run tagged with the original's id. Returns the results, the replay's
    final metric and the original best."""
    import yaml

    record = records.load_experiment_record(tracking_uri, run_id)
    parent, metric = record["parent"], record["metric"]
    if not record["best_schedule"]:
        raise TrackingError(f"run_id: {run_id} has no best_schedule.json; replay needs a parent "
                            "run of a finished pbtflow experiment.")
    best_id = parent.data.tags.get(names.BEST_TRIAL)
    best_child = next(c for c in record["children"] if c.data.tags.get(names.TRIAL_ID) == best_id)
    steps = int(best_child.data.metrics.get(names.TRAINING_ITERATION, 1))
    with tempfile.TemporaryDirectory() as tmp:
        settings = yaml.safe_load(Path(records.download_artifact(
            record, names.EXPERIMENT_FILE, tmp)).read_text())
        schedule_file = records.download_artifact(record, names.SCHEDULE_FILE, tmp)
        settings.update(stop_iters=steps, stop_return=float("inf"), resume=None,
                        tracking_uri=tracking_uri or settings.get("tracking_uri"))
        experiment = Experiment(**settings)
        results = tune(experiment, replay={"schedule_file": schedule_file,
                                           "parent_run_id": parent.info.run_id})
    final = flatten_dict(dict(results[0].metrics or {}), delimiter="/").get(metric)
    return results, final, parent.data.metrics.get(names.BEST_PREFIX + metric)
