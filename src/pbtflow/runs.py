"""The experiment's parent run in MLflow: opened (or reopened on resume, or
the Azure ML job's own run), written by the driver, ended FINISHED, FAILED
or KILLED; the runs a driver that died hard left RUNNING ended by whoever
finds them; and what a run could not deliver uploaded later (`pbtflow sync`)."""

from __future__ import annotations

import json
import logging
import os
import socket
import tempfile
import threading
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import mlflow
import yaml
from mlflow.entities import Metric, RunTag
from mlflow.tracking import MlflowClient
from mlflow.utils.validation import MAX_TAG_VAL_LENGTH

from pbtflow import names
from pbtflow.credentials import redact, scrub, secret_values
from pbtflow.delivery import batches, send, send_or_spill, spill
from pbtflow.experiment import Experiment, ExperimentError, SettingError, TrackingError
from pbtflow.tracking import as_number, mlflow_params

log = logging.getLogger(__name__)


def resolve_tracking_uri(experiment: Experiment) -> str:
    """--tracking-uri, else $MLFLOW_TRACKING_URI, else MLflow's embedded default."""
    return experiment.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or mlflow.get_tracking_uri()


def open_store(uri: str) -> threading.Thread:
    """Start setting up MLflow's store for ``uri`` in the background (for a new
    SQLite file, its tables: about 2.5 s), so that it overlaps Ray's start-up;
    MLflow keeps the store for the process. Join the thread before the first
    use of the store: two threads creating it at once would race. A failure is
    left to parent_run, which says what is wrong in one sentence."""
    return in_background(lambda: MlflowClient(uri).search_experiments(max_results=1),
                         "pbtflow-mlflow-store")


def in_background(work: Callable[[], Any], name: str) -> threading.Thread:
    """``work`` started in a daemon thread; what it raises is dropped (the
    caller does the same work again where an error would be reported)."""
    def run() -> None:
        try:
            work()
        except Exception:  # noqa: BLE001,S110
            pass

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    return thread


def check_reachable(uri: str, timeout: float = 5.0) -> None:
    """Fail with one sentence if an HTTP tracking server does not answer."""
    if not uri.startswith(("http://", "https://")):
        return
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout):
            return
    except urllib.error.HTTPError as exc:
        if exc.code < 500:  # it answered: auth-protected or a proxy without /health
            return
        reason = f"HTTP {exc.code}"
    except (urllib.error.URLError, OSError) as exc:
        reason = str(getattr(exc, "reason", exc))
    raise TrackingError(f"tracking_uri: the MLflow tracking server at {uri} is not reachable "
                        f"({reason}); start it, or pass a reachable --tracking-uri.")


def sync(path: str | Path) -> tuple[int, int]:
    """Upload what a run could not deliver (``pbtflow sync``); returns the
    number of metric rows and run endings sent, and removes the file."""
    path = Path(path)
    if not path.is_file():
        raise SettingError(f"sync: no such file {str(path)!r}; pass the file the interrupted "
                           "delivery named.")
    data = json.loads(path.read_text())
    check_reachable(data["tracking_uri"])
    client = MlflowClient(data["tracking_uri"])
    count = 0
    for run_id, items in data["rows"].items():
        metrics = [Metric(k, v, t, st) for k, v, t, st in items]
        for batch in batches(metrics):
            client.log_batch(run_id, metrics=batch)
        count += len(metrics)
    for delivery in data.get("deliveries", []):
        send(client, delivery)
    for run_id, status in data["terminal"].items():
        client.set_terminated(run_id, status)
    # The driver that spilled is gone: none of its runs may stay RUNNING.
    run_ids = set(data["rows"]) | set(data["terminal"]) | {d["run_id"] for d in data.get("deliveries", [])}
    parents = set()
    for run_id in run_ids - {r for r in run_ids if r.startswith("unborn:")}:
        tags = client.get_run(run_id).data.tags
        parents.add(run_id if tags.get(names.ROLE) == "parent" else tags.get(names.PARENT_RUN_ID))
    for parent_id in parents - {None}:
        end_orphans(client, parent_id, driver_gone=True)
    path.unlink()
    return count, len(data["terminal"])


class TuningInterrupted(Exception):
    """Tuning stopped on SIGINT/SIGTERM; the experiment state is saved in ``path``.
    The message says how to resume from Python; the command line says how to
    resume with the command that was run (see ``pbtflow.cli``)."""

    def __init__(self, path: Path | str, command: str | None = None) -> None:
        self.path = str(path)
        how = f"{command} --resume {self.path}" if command else \
            f"pbtflow.tune(pbtflow.Experiment(resume={self.path!r}))"
        super().__init__(f"interrupted; the experiment state is saved in {self.path}. Resume with: {how}")


class ParentRun:
    """The experiment's parent run: the active run (inside an Azure ML job the
    job's own run, from $MLFLOW_RUN_ID) or a new run in the named experiment."""

    def __init__(self, client: MlflowClient, run_id: str, experiment_id: str, owned: bool) -> None:
        self.client = client
        self.run_id = run_id
        self.experiment_id = experiment_id
        self.owned = owned  # we created it, so we end it
        self.spill_path: Path | None = None  # where to keep what MLflow could not take

    def end(self, status: str) -> None:
        if not self.owned:
            return
        try:
            self.client.set_terminated(self.run_id, status)
        except Exception as exc:
            if self.spill_path is None:
                raise
            spill(self.spill_path, self.client.tracking_uri, {}, {self.run_id: status})
            log.warning("pbtflow: could not end the parent run in MLflow (%s); upload it later "
                        "with: pbtflow sync %s", exc, self.spill_path)

    def where(self) -> str:
        """Where a person finds the run: its URL on a tracking server, else the
        command that opens the MLflow UI on the store."""
        uri = self.client.tracking_uri
        if uri.startswith(("http://", "https://")):
            return f"{uri.rstrip('/')}/#/experiments/{self.experiment_id}/runs/{self.run_id}"
        if uri.startswith("azureml:"):
            return "in Azure ML studio, under the job's experiment"
        return f"open the UI with: mlflow ui --backend-store-uri {uri}"

    def log_experiment(self, experiment: Experiment, extra_params: Mapping[str, Any]) -> None:
        settings = experiment.applicable_settings()
        settings.update(extra_params)
        self.client.log_batch(self.run_id, params=mlflow_params(settings),
                              tags=[RunTag(names.ROLE, "parent")])
        safe = scrub(experiment.to_dict(portable=True))  # what replay re-runs, on any machine
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / names.EXPERIMENT_FILE
            path.write_text(yaml.safe_dump(json.loads(json.dumps(safe, default=repr)), sort_keys=False))
            self.client.log_artifact(self.run_id, str(path))

    def deliver(self, kind: str, **fields: Any) -> bool:
        """Write to the parent run; what MLflow does not take is kept for
        `pbtflow sync` in the spill file."""
        return send_or_spill(self.client, {"run_id": self.run_id, "kind": kind, **fields},
                             self.spill_path)

    def log_best(self, trial_id: str, metric: str, value: float | None,
                 config: Mapping[str, Any]) -> None:
        self.deliver("tag", key=names.BEST_TRIAL, value=trial_id)
        rows = []
        if value is not None and as_number(value) is not None:
            rows.append([names.BEST_PREFIX + metric, float(value), int(time.time() * 1000), 0])
        params = [[p.key, p.value] for p in mlflow_params({f"best.{k}": v for k, v in config.items()})]
        self.deliver("batch", metrics=rows, params=params)

    def log_evaluations(self, evaluations: list, run_ids: Mapping[str, str], metric: str) -> None:
        """Each evaluated member's eval/* metrics on its child run, and the
        leaderboard (best evaluation first) as a table on the parent."""
        now = int(time.time() * 1000)
        for evaluation in evaluations:
            if evaluation.trial_id in run_ids:
                rows = [[k, v, now, 0] for k, v in evaluation.metrics().items()]
                send_or_spill(self.client, {"run_id": run_ids[evaluation.trial_id], "kind": "batch",
                                            "metrics": rows}, self.spill_path)
        # MLflow's table layout, written whole (log_table would append to a
        # table that a sync retry or a resume had written already).
        table = {"columns": ["trial_id", *evaluations[0].metrics(), f"final {metric}"],
                 "data": [[e.trial_id, *e.metrics().values(), e.training_value] for e in evaluations]}
        self.deliver("json", data=table, path=names.LEADERBOARD_FILE)
        best = evaluations[0]
        self.deliver("batch", metrics=[[names.BEST_PREFIX + k, v, now, 0]
                                       for k, v in best.metrics().items()], params=[])

    def log_artifacts(self, paths: list[str | Path], folder: str | None = "plots") -> None:
        """Upload files (e.g. pictures) to the parent run under ``folder``."""
        for path in paths:
            self.deliver("file", local=str(path), folder=folder)


def log_lineage(parent: "ParentRun", lineage: Mapping[str, Any], schedule: Mapping[str, Any],
                checkpoint_dir: str | None) -> None:
    parent.deliver("json", data=scrub(lineage), path=names.LINEAGE_FILE)
    parent.deliver("json", data=scrub(schedule), path=names.SCHEDULE_FILE)
    if checkpoint_dir:
        parent.deliver("dir", local=str(checkpoint_dir), folder="best_checkpoint")


def _experiment_id(client: MlflowClient, name: str) -> str:
    found = client.get_experiment_by_name(name)
    if found is not None:
        if found.lifecycle_stage == "deleted":
            raise TrackingError(f"experiment_name: the MLflow experiment {name!r} is deleted; "
                                "restore it or pick another --experiment-name.")
        return found.experiment_id
    return client.create_experiment(name)


@contextmanager
def parent_run(experiment: Experiment, uri: str, resume_run_id: str | None = None,
               run_name: str | None = None) -> Iterator[ParentRun]:
    """Open the parent run named ``run_name`` (or reopen ``resume_run_id``) at
    tracking URI ``uri`` (resolved and checked reachable by the caller); end
    it FINISHED, FAILED (with the error) or KILLED."""
    client = MlflowClient(uri)
    active = mlflow.active_run()
    env_run = os.environ.get("MLFLOW_RUN_ID")
    try:
        if resume_run_id is not None:
            # The interrupted driver may have died without ending its runs.
            end_orphans(client, resume_run_id, driver_gone=True)
            run = client.get_run(resume_run_id)
            owned = run.data.tags.get(names.ROLE) == "parent" and not env_run
            if owned:
                client.update_run(resume_run_id, status="RUNNING")
            parent = ParentRun(client, resume_run_id, run.info.experiment_id, owned=owned)
        elif active is not None or env_run:
            run_id = active.info.run_id if active is not None else env_run
            parent = ParentRun(client, run_id, client.get_run(run_id).info.experiment_id, owned=False)
        else:
            exp_id = _experiment_id(client, experiment.experiment_name)
            run = client.create_run(exp_id, run_name=run_name, tags={names.ROLE: "parent"})
            parent = ParentRun(client, run.info.run_id, exp_id, owned=True)
        client.set_tag(parent.run_id, names.DRIVER, driver_id())
    except ExperimentError:
        raise
    except Exception as exc:
        raise TrackingError(f"tracking_uri: MLflow at {uri} refused to open the parent run ({exc}); "
                            "check the URI and your access to it.") from None
    try:
        yield parent
    except (KeyboardInterrupt, TuningInterrupted):
        parent.end("KILLED")
        raise
    except BaseException as exc:
        try:
            client.set_tag(parent.run_id, names.ERROR,
                           redact(str(exc), secret_values(experiment.to_dict()))[:MAX_TAG_VAL_LENGTH]
                           or type(exc).__name__)
        except Exception:  # MLflow away: the error still reaches the user
            pass
        parent.end("FAILED")
        raise
    else:
        parent.end("FINISHED")


def driver_id() -> str:
    """Which process drives the experiment: host and pid."""
    return f"{socket.gethostname()}:{os.getpid()}"


def _driver_alive(driver: str | None) -> bool | None:
    """Whether the process named by a driver tag still runs; None when that
    cannot be told from here (another host)."""
    host, _, pid = (driver or "").rpartition(":")
    if not pid.isdigit() or host != socket.gethostname():
        return None
    if int(pid) == os.getpid():
        return True
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def end_orphans(client: MlflowClient, parent_run_id: str, driver_gone: bool = False) -> list[str]:
    """End the runs a driver left RUNNING when it died hard (SIGKILL, out of
    memory, a lost machine): the parent and its RUNNING children become
    KILLED, tagged with why. ``driver_gone``: the caller knows it is gone
    (a resume, a spill file); else it must be a dead process on this host.
    Returns the run ids it ended."""
    parent = client.get_run(parent_run_id)
    if parent.info.status != "RUNNING" or parent.data.tags.get(names.ROLE) != "parent":
        return []
    driver = parent.data.tags.get(names.DRIVER)
    if not driver_gone and _driver_alive(driver) is not False:
        return []
    children = client.search_runs([parent.info.experiment_id],
                                  f"tags.`{names.PARENT_RUN_ID}` = '{parent_run_id}'",
                                  max_results=10000)
    why = (f"the driver ({driver or 'unknown'}) ended without ending its runs (killed hard, out of "
           "memory or a lost machine); ended KILLED by pbtflow")
    ended = []
    for run in [parent, *children]:
        if run.info.status == "RUNNING":
            client.set_tag(run.info.run_id, names.KILLED_BECAUSE, why)
            client.set_terminated(run.info.run_id, "KILLED")
            ended.append(run.info.run_id)
    log.warning("pbtflow: %d runs of parent %s were left RUNNING by a driver that died; marked KILLED.",
                len(ended), parent_run_id)
    return ended
