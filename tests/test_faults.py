"""Faults (slow: run with `make test-slow`): a trial's worker killed mid-run, and the driver interrupted and
resumed. The MLflow record afterwards must look like a clean run's."""

import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from mlflow.tracking import MlflowClient

from conftest import (finish, kill_group, run_entry, start_entry, start_mlflow_server, stop_mlflow_server,
                      wait_for_rows)
from mlflow_checks import runs_by_role
from pbtflow import names

pytestmark = pytest.mark.slow

# No exploits (perturbation interval beyond the budget), so each member's
# training_iteration history must be exactly 1, 2, ..., stop_iters.
ARGS = ["--population", "2", "--stop-iters", "10", "--stop-return", "inf",
        "--perturbation-interval", "100", "--checkpoint-interval", "2", "--seed", "0"]


def _start(tmp_path, *extra):
    return start_entry(*ARGS, *extra, cwd=tmp_path)


def _assert_clean_record(tmp_path, name):
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    parents, children = runs_by_role(client, name)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert parents[0].data.tags.get("pbtflow.record_check") == "complete"
    assert len(children) == 2
    for child in children:
        assert child.info.status == "FINISHED"
        history = client.get_metric_history(child.info.run_id, "training_iteration")
        assert [m.step for m in history] == list(range(10))
        assert [int(m.value) for m in history] == list(range(1, 11))
        gaps = sorted((b.timestamp - a.timestamp) / 1000 for a, b in zip(history, history[1:]))
        # What the fault cost (shown with `pytest -s`): the longest pause between two results.
        print(f"\n{name}: {child.data.tags.get('pbtflow.trial_id', child.info.run_id)} longest gap "
              f"between results {gaps[-1]:.1f} s, median {gaps[len(gaps) // 2]:.1f} s")


def test_killed_worker_is_retried_into_the_same_child_run(tmp_path):
    proc = _start(tmp_path, "--experiment-name", "kill")
    wait_for_rows(tmp_path, 4, proc)
    # A member's actor runs pbtflow's PPO (PBTPPO): Ray titles it "ray::PBTPPO.train" etc.
    def is_member(title: str) -> bool:
        return title.startswith(("ray::PBTPPO", "ray::PPO"))

    workers = [p for p in psutil.Process(proc.pid).children(recursive=True)
               if is_member(p.name()) or is_member(" ".join(p.cmdline()))]
    if not workers:  # Ray's workers are children of its raylet, not of the driver
        workers = [p for p in psutil.process_iter(["cmdline"])
                   if is_member((p.info["cmdline"] or [""])[0])
                   and str(tmp_path) in " ".join(p.cwd() for _ in [0])]
    assert workers, "no PPO worker process found"
    workers[0].send_signal(signal.SIGKILL)
    out, err = finish(proc, 600)
    assert proc.returncode == 0, err[-3000:]
    _assert_clean_record(tmp_path, "kill")


def test_interrupted_driver_resumes_into_the_same_runs(tmp_path):
    proc = _start(tmp_path, "--experiment-name", "resume")
    wait_for_rows(tmp_path, 6, proc)
    proc.send_signal(signal.SIGTERM)
    out, err = finish(proc, 300)
    assert proc.returncode == 130, err[-3000:]
    assert "Resume with: python src/tune_ppo.py --resume " in err
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    parents, children = runs_by_role(client, "resume")
    assert parents[0].info.status == "KILLED"
    # KILLED: a member that had not reached its end (a quick one may have).
    ended = {c.info.run_id: len(client.get_metric_history(c.info.run_id, "training_iteration")) == 10
             for c in children}
    assert {c.info.status for c in children if not ended[c.info.run_id]} == {"KILLED"}
    assert {c.info.status for c in children if ended[c.info.run_id]} <= {"FINISHED"}
    path = err.split("--resume ")[1].split()[0]
    resumed = run_entry("--resume", path, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    _assert_clean_record(tmp_path, "resume")


def _start_slow_run(tmp_path, uri, iters):
    (tmp_path / "exp.yaml").write_text(
        "trainable: user_trainables:slow_counting\nmetric: score\npopulation: 2\n"
        f"stop_iters: {iters}\nperturbation_interval: 5\nexperiment_name: away\n"
        "initial: {x: 1.0, sleep: 0.25}\nmutations: {x: [1.0, 2.0, 3.0]}\n")
    return start_entry("--config", "exp.yaml", "--tracking-uri", uri, cwd=tmp_path,
                       env={"PYTHONPATH": str(Path(__file__).parent)})


def _wait_for_server_rows(uri, rows, proc, timeout=240):
    client = MlflowClient(uri)
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        exp = client.get_experiment_by_name("away")
        if exp is not None:
            runs = client.search_runs([exp.experiment_id], "tags.`pbtflow.role` = 'trial'")
            if sum(len(client.get_metric_history(r.info.run_id, "training_iteration"))
                   for r in runs) >= rows:
                return
        time.sleep(1)
    kill_group(proc)
    raise AssertionError("no metrics reached the server in time")


def _assert_complete(uri, iters):
    client = MlflowClient(uri)
    parents, children = runs_by_role(client, "away")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert parents[0].data.tags.get("pbtflow.record_check") == "complete"
    assert len(children) == 2
    for child in children:
        assert child.info.status == "FINISHED"
        history = client.get_metric_history(child.info.run_id, "training_iteration")
        assert [m.step for m in history] == list(range(len(history)))
        assert len(history) >= iters and history[-1].value == iters


def test_tracking_server_away_mid_run_gets_the_metrics_when_back(tmp_path):
    root = tmp_path / "server"
    server, uri = start_mlflow_server(root)
    proc = _start_slow_run(tmp_path, uri, 40)
    try:
        _wait_for_server_rows(uri, 4, proc)
        stop_mlflow_server(server)
        time.sleep(6)  # results keep coming while the server is away
        server, _ = start_mlflow_server(root, port=int(uri.rsplit(":", 1)[1]))
        out, err = finish(proc, 600)
        assert proc.returncode == 0, err[-3000:]
        assert "could not write to MLflow" in err
        _assert_complete(uri, 40)
        parent = runs_by_role(MlflowClient(uri), "away")[0][0]
        assert (f"MLflow parent run {parent.info.run_id}: {uri}/#/experiments/"
                f"{parent.info.experiment_id}/runs/{parent.info.run_id}") in err
    finally:
        stop_mlflow_server(server)


def test_tracking_server_gone_for_good_spills_for_pbtflow_sync(tmp_path):
    root = tmp_path / "server"
    server, uri = start_mlflow_server(root)
    proc = _start_slow_run(tmp_path, uri, 20)
    _wait_for_server_rows(uri, 4, proc)
    stop_mlflow_server(server)
    out, err = finish(proc, 600)
    assert proc.returncode == 0, err[-3000:]
    assert "pbtflow sync " in err
    spilled = err.split("pbtflow sync ")[-1].split()[0]
    assert Path(spilled).is_file()
    server, _ = start_mlflow_server(root, port=int(uri.rsplit(":", 1)[1]))
    try:
        synced = subprocess.run([sys.executable, "-m", "pbtflow.cli", "sync", spilled],
                                capture_output=True, text=True, timeout=120)
        assert synced.returncode == 0, synced.stderr[-2000:]
        assert not Path(spilled).exists()
        # The run could not check its record with the server gone; once synced,
        # the record (rows, exploits, summary) reconciles with Ray's log.
        assert "pbtflow check --run-id" in err
        parent = runs_by_role(MlflowClient(uri), "away")[0][0]
        checked = subprocess.run([sys.executable, "-m", "pbtflow.cli", "check", "--run-id",
                                  parent.info.run_id, "--tracking-uri", uri],
                                 capture_output=True, text=True, timeout=120)
        assert checked.returncode == 0, checked.stdout[-2000:] + checked.stderr[-2000:]
        _assert_complete(uri, 20)
    finally:
        stop_mlflow_server(server)


def _start_function_run(tmp_path, name, *extra):
    (tmp_path / "exp.yaml").write_text(
        "metric: score\npopulation: 2\nstop_iters: 200\n"
        "perturbation_interval: 5\nexperiment_name: " + name + "\n"
        "initial: {x: 1.0, sleep: 0.25}\nmutations: {x: [1.0, 2.0, 3.0]}\n")
    return start_entry("--config", "exp.yaml", *extra, cwd=tmp_path,
                       env={"PYTHONPATH": str(Path(__file__).parent)})


def test_a_stalled_experiment_ends_as_interrupted_with_its_runs_killed(tmp_path):
    proc = _start_function_run(tmp_path, "stall", "--trainable", "user_trainables:blocking",
                               "--stall-timeout", "8")
    out, err = finish(proc, 300)  # a stall not caught: killed with its Ray
    assert proc.returncode == 130, err[-3000:]
    assert "stall_timeout: no member has reported for" in out
    assert "Resume with: python src/tune_ppo.py --resume " in err
    parents, children = runs_by_role(MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}"), "stall")
    assert parents[0].info.status == "KILLED"
    assert {c.info.status for c in children} == {"KILLED"}


def test_runs_of_a_driver_killed_hard_are_ended_by_check_and_resume(tmp_path):
    proc = _start_function_run(tmp_path, "hard", "--trainable", "user_trainables:slow_counting")
    wait_for_rows(tmp_path, 6, proc)
    kill_group(proc)  # the driver and the Ray it started: no chance to clean up
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    parents, children = runs_by_role(client, "hard")
    assert parents[0].info.status == "RUNNING" and {c.info.status for c in children} == {"RUNNING"}
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    checked = subprocess.run([sys.executable, "-m", "pbtflow.cli", "check", "--run-id",
                              parents[0].info.run_id, "--tracking-uri", uri], cwd=tmp_path,
                             capture_output=True, text=True, timeout=120)
    assert "marked KILLED" in checked.stderr, checked.stderr[-2000:]
    parents, children = runs_by_role(client, "hard")
    for run in parents + children:
        assert run.info.status == "KILLED"
        assert "ended without ending its runs" in run.data.tags["pbtflow.killed_because"]


def _exploits_logged(tmp_path) -> int:
    logs = list((tmp_path / "pbtflow_results").glob("*/pbt_global.txt"))
    return sum(1 for line in logs[0].read_text().splitlines() if line.strip()) if logs else 0


@pytest.mark.parametrize("point", ["early", "middle", "after an exploit"])
def test_the_default_ppo_experiment_resumes_to_its_end(tmp_path, point):
    """`python src/tune_ppo.py` (population 4, stop at a mean return of 450),
    interrupted at three points and resumed: each ends as an uninterrupted run
    does, the population stop included."""
    # Asynchronous PBT may reach the target before any exploit: for the third
    # point, synchronous PBT every 3 iterations makes an early exploit certain.
    extra = ["--synch", "--perturbation-interval", "3"] if point == "after an exploit" else []
    proc = start_entry("--seed", "1", *extra, cwd=tmp_path)
    try:
        if point == "early":
            wait_for_rows(tmp_path, 3, proc)
        elif point == "middle":
            wait_for_rows(tmp_path, 20, proc)
        else:
            deadline = time.time() + 300
            while _exploits_logged(tmp_path) == 0 and time.time() < deadline:
                assert proc.poll() is None, proc.communicate()[1][-2000:]
                time.sleep(0.2)
            assert proc.poll() is None, "the run ended at its first exploit"
            assert _exploits_logged(tmp_path) > 0, "no exploit in 5 minutes"
    except BaseException:
        kill_group(proc)
        raise
    proc.send_signal(signal.SIGINT)
    out, err = finish(proc, 300)
    if proc.returncode == 0:
        pytest.skip(f"the run reached its target before the {point} interruption")
    assert proc.returncode == 130, err[-3000:]
    path = err.split("--resume ")[1].split()[0]
    resumed = run_entry("--resume", path, "--stall-timeout", "300", cwd=tmp_path, timeout=900)
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-3000:]
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    parents, children = runs_by_role(client, "pbt")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert parents[0].data.tags.get("pbtflow.record_check") == "complete"
    assert len(children) == 4
    for child in children:
        assert child.info.status == "FINISHED"
        steps = [m.step for m in client.get_metric_history(child.info.run_id, "training_iteration")]
        assert steps == list(range(len(steps)))
    # The population stop: a member's own training return reached the target.
    # (The parent's best/* is the best member by greedy evaluation, whose
    # training return may be lower: CI once saw 192 there.)
    last = [child.data.metrics[names.RETURN_MEAN] for child in children]
    assert max(last) >= 450 and max(len(client.get_metric_history(c.info.run_id, "training_iteration"))
                                    for c in children) < 100, last


@pytest.mark.parametrize("ended_on", ["target", "error"])
def test_an_experiment_the_population_stopper_ended_resumes_at_once(tmp_path, ended_on):
    """The state Tune saves once the population stopper has ended every member
    (here: an experiment that reached its target or stopped on a wrong metric;
    also what a Ctrl-C right after the target leaves) resumes in a new process
    to the same end at once, without waiting for the members Tune had already
    terminated: the same rows, the parent run finished; or the error again,
    saying that there is nothing to resume."""
    (tmp_path / "climb.py").write_text(
        "from pbtflow import checkpoint\n\n\ndef climb(config):\n    run = checkpoint.resume({})\n"
        "    while True:\n        run.report({'score': config['x'] * run.step})\n")
    metric = "score" if ended_on == "target" else "scores"
    (tmp_path / "exp.yaml").write_text(
        f"trainable: climb:climb\nmetric: {metric}\npopulation: 2\nstop_iters: 40\nstop_return: 12\n"
        "perturbation_interval: 4\nseed: 0\nexperiment_name: ended\n"
        "initial:\n  x: {uniform: [0.5, 1.0]}\nmutations:\n  x: {uniform: [0.5, 1.0]}\n")
    first = run_entry("--config", "exp.yaml", cwd=tmp_path, timeout=300)
    folder = next((tmp_path / "pbtflow_results").iterdir())
    started = time.monotonic()
    if ended_on == "error":
        assert first.returncode == 2 and "never reports 'scores'" in first.stderr, first.stderr[-3000:]
        resumed = run_entry("--resume", str(folder), "--stall-timeout", "60", cwd=tmp_path, timeout=120)
        assert resumed.returncode == 2, resumed.stdout[-2000:] + resumed.stderr[-3000:]
        assert "had already ended on an error, so there is nothing to resume" in resumed.stderr
        assert "never reports 'scores'" in resumed.stderr
        return
    assert first.returncode == 0, first.stderr[-3000:]
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")

    def rows():
        _, children = runs_by_role(client, "ended")
        return {c.info.run_id: [(m.step, m.value) for m in client.get_metric_history(c.info.run_id, "score")]
                for c in children}

    before = rows()
    assert len(before) == 2 and max(v for h in before.values() for _, v in h) >= 12
    # Ended by the stopper's stop_all (the path that does not tell the searcher), not at stop_iters.
    assert all(len(history) < 40 for history in before.values()), before
    resumed = run_entry("--resume", str(folder), "--stall-timeout", "60", cwd=tmp_path, timeout=120)
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-3000:]
    assert "no member has reported" not in resumed.stdout, resumed.stdout[-2000:]
    assert rows() == before
    parents, _ = runs_by_role(client, "ended")
    assert [p.info.status for p in parents] == ["FINISHED"]
    print(f"\nresumed a finished experiment in {time.monotonic() - started:.1f} s")
