"""After the population has trained: the best member (by greedy evaluation
when asked, else by training return), the parent run's summary (best values,
lineage, best schedule, checkpoint, pictures, the policy as an MLflow model)
and the record check against Ray's PBT log. A failure here warns: what is
recorded stays."""

from __future__ import annotations

import importlib
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any, Mapping

from ray.tune import ResultGrid
from ray.tune.utils import flatten_dict

from pbtflow import evaluation, lineage, names, policy, record_check, runs, tracking
from pbtflow.experiment import Experiment

log = logging.getLogger(__name__)


def summarize(experiment: Experiment, spec, results: ResultGrid, metric: str,
              replay: Mapping[str, Any] | None, parent: runs.ParentRun,
              tracker: tracking.TrialTracker, experiment_path: Path) -> None:
    """Evaluate, log the summary on the parent run and check the record."""
    if results.num_errors == len(results):
        raise RuntimeError(f"every trial failed; first error: {results.errors[0]}")
    best_trial, value, checkpoint = best(results, metric, experiment.mode)
    evaluations = evaluate(experiment, spec, results, metric, replay)
    events = tracker.kept_events
    try:
        if evaluations:  # the best by evaluation is the experiment's best
            parent.log_evaluations(evaluations, tracker.run_ids, metric)
            parent.deliver("tag", key=names.BEST_BY_TRAINING, value=best_trial)
            by_training, top = best_trial, evaluations[0]
            best_trial, value, checkpoint = top.trial_id, top.training_value, top.checkpoint
            log.info("pbtflow: best by evaluation: %s, return %.4g +- %.3g over %d greedy episodes%s",
                     best_trial, top.mean, top.std, len(top.returns),
                     "" if by_training == best_trial else f" (best by training return: {by_training})")
        if best_trial:
            parent.log_best(best_trial, metric, value, tracker.last_config(best_trial))
        lineage_record = lineage.build_lineage(events, tracker.initial)
        runs.log_lineage(parent, lineage_record,
                         lineage.best_schedule(events, tracker.initial, best_trial),
                         checkpoint if experiment.upload_checkpoint else None)
        log_plots(experiment, results, lineage_record, experiment_path, parent,
                  tracker.hp_history, tracker.mutated)
        if experiment.is_rllib and checkpoint:
            log_policy(experiment, parent, checkpoint)
    except Exception as exc:  # MLflow away at the very end: the results are on disk
        log.warning("pbtflow: could not log the summary to MLflow (%s); the results stay in %s.",
                    exc, experiment_path)
    if replay is None:
        check_record(parent, experiment_path)
    log.info("best trial %s: %s = %s", best_trial or "-", metric, value)
    log.info("MLflow parent run %s: %s", parent.run_id, parent.where())


def preload() -> threading.Thread | None:
    """Import the pictures' libraries (matplotlib) in the background; not
    when the caller uses pyplot already (importing plots selects matplotlib's
    file backend: that stays on the main thread, at the pictures)."""
    if "matplotlib.pyplot" in sys.modules and "pbtflow.plots" not in sys.modules:
        return None
    return runs.in_background(lambda: importlib.import_module("pbtflow.plots"), "pbtflow-preload")


def log_policy(experiment: Experiment, parent: runs.ParentRun, checkpoint: str) -> None:
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


def ranked(results: ResultGrid, metric: str, mode: str) -> list[tuple[float, Any]]:
    """(last metric value, result) of every member that reported the metric, best first."""
    scored = []
    for result in results:
        value = flatten_dict(dict(result.metrics or {}), delimiter="/").get(metric)
        number = tracking.as_number(value)
        if number is not None:
            scored.append((number, result))
    return sorted(scored, key=lambda item: -item[0] if mode == "max" else item[0])


def best(results: ResultGrid, metric: str, mode: str) -> tuple[str, float | None, str | None]:
    """(trial id, last metric value, checkpoint path) of the best member by
    its last result; ("", None, None) if no member reported the metric."""
    scored = ranked(results, metric, mode)
    if not scored:
        log.warning("pbtflow: no member reported %s, so there is no best member.", metric)
        return "", None, None
    value, top = scored[0]
    return top.metrics.get("trial_id", ""), value, top.checkpoint.path if top.checkpoint else None


def evaluate(experiment: Experiment, spec, results: ResultGrid, metric: str,
              replay: Mapping[str, Any] | None) -> list:
    """The top members by training metric (``eval_top``), each playing
    ``eval_episodes`` greedy episodes on fresh seeds, best evaluation first;
    [] when off, for a replay (one member), or when interrupted or failed:
    the tuning's results and record stand."""
    if not (experiment.is_rllib and experiment.eval_top) or replay is not None:
        return []
    top = [(r.metrics["trial_id"], value, r) for value, r in ranked(results, metric, experiment.mode)
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


def check_record(parent: runs.ParentRun, experiment_path: Path) -> list[str] | None:
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


def log_plots(experiment: Experiment, results: ResultGrid, lineage_record: Mapping[str, Any],
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
