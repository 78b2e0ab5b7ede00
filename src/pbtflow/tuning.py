"""``pbtflow.tune``: plan -> tuner -> fit -> summary. The plan turns an
Experiment into Tune's pieces (the trainable's spec, the scheduler, the
folders); the tuner is new, with pbtflow's callbacks, or restored to resume;
fit runs it and ends every MLflow run as Tune left its trial; summary.py then
reports the best member and checks the record."""

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
import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import ray
from ray import tune as ray_tune
from ray.tune import ResultGrid
from ray.tune.logger import CSVLoggerCallback
from ray.tune.utils import flatten_dict

from pbtflow import (baselines, cluster, console, credentials, delivery, lineage, names, ray_internals,
                     records, resume, runs, stopping, summary, tracking, trainables)
from pbtflow.experiment import Experiment, SettingError, TrackingError
from pbtflow.pbt import Recording, ScheduleReplay, build_scheduler, flatten_keys
from pbtflow.retention import PBTSafeRetention
from pbtflow.trainables.function import load as load_users_function

log = logging.getLogger(__name__)
DEFAULT_STORAGE = "pbtflow_results"
KEEP_CHECKPOINTS = 2  # per trial, besides those PBT may still restore from (see retention.py)

# Where experiments interrupted before these classes moved to stopping.py
# pickled them (Tune's saved state): their resume still finds them here.
_Population, _StallWatch, _TrainableWatch = stopping.Population, stopping.StallWatch, stopping.TrainableWatch
PopulationStopper = stopping.PopulationStopper


@dataclasses.dataclass
class Plan:
    """What Tune is given for an experiment, and where it writes."""
    experiment: Experiment
    spec: trainables.TrainableSpec
    scheduler: Any
    metric: str
    mutated: list[str]  # the keys PBT changes
    constants: list[str]  # the other hyperparameters
    storage: Path
    run_name: str  # Ray's experiment folder, and the MLflow parent run's name
    experiment_path: Path


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
    state = resume.load(experiment.resume) if experiment.resume else None
    if state is not None:  # the interrupted experiment, with a stall timeout given now
        experiment = state["experiment"].replace(
            stall_timeout=experiment.stall_timeout or state["experiment"].stall_timeout)
    if experiment.seed is not None:
        random.seed(experiment.seed)
        np.random.seed(experiment.seed)
    plan = _plan(experiment, replay, state)
    uri = _start_ray(experiment, plan.storage, worker_logs)
    with runs.parent_run(experiment, uri, state["parent_run_id"] if state else None,
                         run_name=plan.experiment_path.name) as parent:
        parent.spill_path = plan.experiment_path / delivery.SPILL_FILE
        if state is None:
            _open_record(plan, parent, replay)
            tuner = _new_tuner(plan, parent, redraw=not worker_logs)
            plan.experiment_path.mkdir(parents=True, exist_ok=True)
            resume.save(experiment, parent.run_id, plan.experiment_path)
        else:
            lineage.keep_ray_log(plan.experiment_path)  # the resumed Ray rewrites pbt_global.txt
            tuner = ray_tune.Tuner.restore(str(plan.experiment_path), trainable=plan.spec.trainable,
                                           param_space=plan.spec.param_space, resume_unfinished=True,
                                           resume_errored=True)
        results, tracker = _fit(tuner, plan, parent)
        summary.summarize(experiment, plan.spec, results, plan.metric, replay, parent, tracker,
                          plan.experiment_path)
    return results


def _plan(experiment: Experiment, replay: Mapping[str, Any] | None,
          state: Mapping[str, Any] | None) -> Plan:
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
    return Plan(experiment, spec, scheduler, metric, mutated, constants, storage, run_name,
                Path(state["path"]) if state else storage / run_name)


def _start_ray(experiment: Experiment, storage: Path, worker_logs: bool) -> str:
    """Fail on an unwritable storage path or an unreachable tracking server
    before Ray starts, and on a trial larger than the cluster before a parent
    run is opened; then start or join Ray. Returns the tracking URI."""
    check_storage(storage)
    uri = runs.resolve_tracking_uri(experiment)
    runs.check_reachable(uri)
    starts_here = not ray.is_initialized() and not cluster.joins_cluster()
    if ray.is_initialized():  # a Ray already running in this process: ask it
        cluster.check_resources(experiment)
    elif starts_here:
        cluster.check_resources(experiment, {"CPU": os.cpu_count() or 1, "GPU": float("inf")})
    # Ray starting on this machine has passed every check: MLflow's store is
    # set up meanwhile (a cluster is checked once joined, before any store).
    store = runs.open_store(uri) if starts_here else None
    try:
        cluster.init_ray(worker_logs)
        ray_internals.check_version()
        cluster.check_resources(experiment)
    finally:
        if store is not None:
            store.join()
    return uri


def _open_record(plan: Plan, parent: runs.ParentRun, replay: Mapping[str, Any] | None) -> None:
    """The new parent run's settings and tags."""
    experiment = plan.experiment
    parent.log_experiment(experiment, {"metric": plan.metric, tracking.MUTATED_PARAM: ",".join(
        k for k in plan.mutated if not credentials.is_secret(k))})
    parent.client.set_tag(parent.run_id, names.STORAGE, str(plan.experiment_path))
    if experiment.baseline:
        parent.client.set_tag(parent.run_id, names.BASELINE, experiment.baseline)
    if replay is not None:
        parent.client.set_tag(parent.run_id, names.REPLAY_OF, replay["parent_run_id"])


def _fit(tuner: ray_tune.Tuner, plan: Plan, parent: runs.ParentRun) -> tuple[ResultGrid, tracking.TrialTracker]:
    """Run the population; every member's MLflow run ends as Tune left its
    trial. A trainable that never reported, or an interrupt, raises."""
    experiment = plan.experiment
    run_config = ray_internals.run_config(tuner)
    tracker = next(c for c in run_config.callbacks if isinstance(c, tracking.TrialTracker))
    tracker.secrets = credentials.secret_values(experiment.to_dict())
    tracker.experiment_path = plan.experiment_path  # where Ray's PBT log is, for a resume
    for callback in run_config.callbacks:
        if isinstance(callback, stopping.StallWatch):
            callback.timeout = experiment.stall_timeout
    stopper = run_config.stop
    # Tune turns SIGINT into a clean stop; make SIGTERM do the same.
    previous = signal.signal(signal.SIGTERM, lambda *_: os.kill(os.getpid(), signal.SIGINT))
    interrupt = stopping.InterruptWatch()
    loading = summary.preload()  # while the members train: the driver mostly waits on Ray then
    try:
        with interrupt:
            results = tuner.fit()
    finally:
        signal.signal(signal.SIGTERM, previous)
        tracker.close(spill_to=parent.spill_path)
        if loading is not None:
            loading.join(timeout=60)  # never left importing when the process ends
    statuses = ray_internals.trial_statuses(results)
    tracker.end_remaining(statuses)
    if stopper.error:  # the trainable does not do what its settings say
        raise SettingError(stopper.error if not stopper.error_saved else (
            "resume: this experiment had already ended on an error, so there is nothing to "
            f"resume; start a new run once it is fixed: {stopper.error}"))
    unfinished = [r.metrics.get("trial_id") for r in results
                  if r.error is None and r.metrics and not r.metrics.get("done")
                  and statuses.get(r.metrics.get("trial_id")) != "ERROR"
                  and r.metrics.get(names.TRAINING_ITERATION, 0) < experiment.stop_iters]
    # Tune says that SIGINT ended it only in a warning, which the caller's
    # logging.disable() silences. Members end without being done otherwise
    # only when the stopper ends the population, so those were interrupted too.
    if interrupt.seen or (unfinished and not stopper.stop_all()):
        tracker.mark_interrupted(unfinished)  # KILLED: the members that had not reached their end
        raise runs.TuningInterrupted(plan.experiment_path)
    return results, tracker


def _new_tuner(plan: Plan, parent: runs.ParentRun, redraw: bool = True) -> ray_tune.Tuner:
    experiment, spec, scheduler = plan.experiment, plan.spec, plan.scheduler
    tracker = tracking.TrialTracker(parent.client, parent.experiment_id, parent.run_id,
                                    plan.mutated, plan.constants, spec.logged_metrics, scheduler,
                                    experiment.time_attr)
    stopper = stopping.PopulationStopper(plan.metric, experiment.mode, experiment.stop_iters,
                                         experiment.stop_return, experiment.time_attr,
                                         spec.metric_pending, save_reaching=not spec.function,
                                         stop_episodes=experiment.stop_episodes,
                                         episodes_key=spec.episodes_key,
                                         episodes_cap=spec.episodes_cap)
    if isinstance(scheduler, Recording):
        scheduler.stopper = stopper
    return ray_tune.Tuner(
        spec.trainable,
        param_space=spec.param_space,
        tune_config=ray_tune.TuneConfig(
            scheduler=scheduler,
            num_samples=1 if isinstance(scheduler, ScheduleReplay) else experiment.population,
            reuse_actors=spec.reuse_actors,
            search_alg=stopping.Population(stopper=stopper, random_state=experiment.seed,
                                           points_to_evaluate=spec.points_to_evaluate),
        ),
        run_config=ray_tune.RunConfig(
            name=plan.run_name,
            storage_path=str(plan.storage),
            stop=stopper,
            callbacks=[tracker, console.Progress(plan.metric, experiment.mode, scheduler, plan.mutated,
                                                 redraw=redraw),
                       CSVLoggerCallback(),
                       stopping.TrainableWatch(stopper, experiment.trainable),
                       stopping.StallWatch(experiment.stall_timeout),
                       PBTSafeRetention(keep=KEEP_CHECKPOINTS, scheduler=scheduler)],
            checkpoint_config=_checkpoint_config(experiment, spec),
            failure_config=ray_tune.FailureConfig(max_failures=experiment.max_failures),
            verbose=0,  # console.Progress prints a compact table instead
        ),
    )


MIN_FREE_MIB = 100  # below this, checkpoints would soon fill the storage disk


def check_storage(path: Path) -> None:
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


def replay(run_id: str, tracking_uri: str | None = None) -> tuple[ResultGrid, float | None, float | None]:
    """Retrain one member on the best schedule of parent run ``run_id``, as a new
    parent run tagged with the original's id. Returns the results, the replay's
    final metric and the original best."""
    import yaml

    record = records.load_experiment_record(tracking_uri, run_id)
    parent, metric = record["parent"], record["metric"]
    if not record["best_schedule"]:
        raise TrackingError(f"run_id: {run_id} has no {names.SCHEDULE_FILE}; replay needs a parent "
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
