"""A real two-node Ray cluster on this machine, as Azure ML starts one for a
job with `distribution: {type: ray}` and `instance_count: 2`: `ray start
--head` and `ray start --address` (one CPU each, their own ports and temp
folder), and a driver that joins it through $RAY_ADDRESS, waits for
$PBTFLOW_RAY_NODES nodes, and places the population on both.

Everything Ray runs in subprocesses: the 2-CPU `ray_runtime` fixture of the
other tests may live in the pytest process. The cluster uses its own temp
folder, so `ray.init()` elsewhere on this machine never finds it, and token
authentication with a token of its own."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import textwrap
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from pbtflow import names
from conftest import ENTRY, free_port
from mlflow_checks import runs_by_role

RAY = Path(sys.executable).with_name("ray")


class LocalRayCluster:
    """Head and worker nodes as `ray start --block` processes, each in its own
    process group, stopped by pid."""

    def __init__(self) -> None:
        # Short: Ray's socket paths under it must stay below 108 characters.
        self.temp_dir = tempfile.mkdtemp(prefix="pbtray", dir="/tmp")
        self.address = f"127.0.0.1:{free_port()}"
        self.env = {k: v for k, v in os.environ.items()
                    if not k.startswith(("MLFLOW_", "RAY_", "AZUREML_"))}
        self.env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32),
                        RAY_USAGE_STATS_ENABLED="0")
        self.processes: list[subprocess.Popen] = []

    def _start(self, role: list[str], log_name: str) -> subprocess.Popen:
        # Every port explicit: two nodes on one machine must not share the defaults.
        ports = ["--node-manager-port", "--object-manager-port", "--metrics-export-port",
                 "--dashboard-agent-listen-port", "--dashboard-agent-grpc-port",
                 "--runtime-env-agent-port"]
        args = [str(RAY), "start", *role, "--num-cpus", "1", "--num-gpus", "0", "--block",
                "--object-store-memory", str(150 * 1024 ** 2), "--disable-usage-stats"]
        for flag in ports:
            args += [flag, str(free_port())]
        log = open(Path(self.temp_dir) / log_name, "w")
        process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=self.env,
                                   start_new_session=True)
        self.processes.append(process)
        return process

    def start_head(self) -> None:
        port = self.address.rsplit(":", 1)[1]
        head = self._start(["--head", "--port", port, "--temp-dir", self.temp_dir,
                            "--include-dashboard", "false"], "head.log")
        self._wait(lambda: (Path(self.temp_dir) / "ray_current_cluster").exists(), head, "head")

    def add_worker(self) -> None:
        self._start(["--address", self.address], f"worker{len(self.processes)}.log")

    def _wait(self, ready, process: subprocess.Popen, what: str, timeout: float = 120) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"ray {what} exited: {self.log_tail()}")
            if ready():
                return
            time.sleep(0.5)
        raise RuntimeError(f"ray {what} did not start in {timeout:g} s: {self.log_tail()}")

    def log_tail(self) -> str:
        return " | ".join(p.read_text()[-800:] for p in Path(self.temp_dir).glob("*.log"))

    def stop(self) -> None:
        for process in reversed(self.processes):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)  # the node drains and stops its processes
        for process in reversed(self.processes):
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                pass
            try:  # whatever that node left behind, in its own process group
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        shutil.rmtree(self.temp_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def cluster():
    cluster = LocalRayCluster()
    try:
        cluster.start_head()
        yield cluster
    finally:
        cluster.stop()


def test_driver_waits_for_the_nodes_and_says_when_they_do_not_come(cluster, tmp_path):
    """Only the head is up; the job expects two nodes."""
    env = dict(cluster.env, RAY_ADDRESS=cluster.address, PBTFLOW_RAY_NODES="2",
               PBTFLOW_RAY_NODES_TIMEOUT="3",
               MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'mlflow.db'}")
    proc = subprocess.run([sys.executable, str(ENTRY), "--trainable", "quadratic"], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 4, proc.stderr[-3000:]  # ClusterError
    assert ("pbtflow: error: PBTFLOW_RAY_NODES: expected 2 Ray nodes, but got 1 alive after 3 s; "
            in proc.stderr)
    assert "Traceback" not in proc.stderr


DRIVER = textwrap.dedent("""
    import json, sys
    import ray
    import pbtflow

    results = pbtflow.tune(pbtflow.Experiment(
        smoke=True, population=2, cpus_per_trial_process=1, seed=0, experiment_name="two-nodes",
        storage_path=sys.argv[1], tracking_uri=sys.argv[2]))
    # Ray's own record of where every trial's placement group was placed.
    # A group Tune created and removed unused (actor reuse) has no node: ''.
    placed = sorted({node for group in ray.util.placement_group_table().values()
                     for node in group["bundles_to_node_id"].values()} - {""})
    nodes = sorted(n["NodeID"] for n in ray.nodes() if n["Alive"])
    print("RESULT " + json.dumps({"nodes": nodes, "placed": placed, "trials": len(results),
                                  "errors": results.num_errors,
                                  "path": str(results.experiment_path)}))
""")


def test_population_trains_on_both_nodes_tracked_under_one_parent(cluster, tmp_path):
    cluster.add_worker()  # joins while the driver starts: the driver waits for it
    storage = tmp_path / "shared-storage"  # one path both nodes see, like the job's rw_mount
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = dict(cluster.env, RAY_ADDRESS=cluster.address, PBTFLOW_RAY_NODES="2",
               PBTFLOW_RAY_NODES_TIMEOUT="120")
    proc = subprocess.run([sys.executable, "-c", DRIVER, str(storage), uri], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:] + cluster.log_tail()
    result = json.loads(proc.stdout.split("RESULT ", 1)[1])

    assert len(result["nodes"]) == 2
    assert result["placed"] == result["nodes"], "every node hosts a trial"
    assert (result["trials"], result["errors"]) == (2, 0)
    assert Path(result["path"]).is_relative_to(storage)
    assert list(Path(result["path"]).glob("*/checkpoint_*")), "checkpoints in the shared storage"

    parents, children = runs_by_role(MlflowClient(uri), "two-nodes")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert len(children) == 2
    assert all(c.data.tags[names.PARENT_RUN_ID] == parents[0].info.run_id for c in children)


def test_the_entry_point_drives_on_the_head_only(tmp_path):
    """Azure ML may run the job's command on every node: the head (rank 0)
    drives the population; on the other node the same command touches neither
    MLflow nor the storage, waits for the head's Ray to stop, and exits 0."""
    two = LocalRayCluster()
    try:
        two.start_head()
        two.add_worker()
        (tmp_path / "head").mkdir()
        (tmp_path / "worker").mkdir()
        command = [sys.executable, str(ENTRY), "--trainable", "quadratic", "--stop-iters", "8",
                   "--cpus-per-trial-process", "1", "--experiment-name", "ranks",
                   "--storage-path", str(tmp_path / "shared-storage")]
        base = dict(two.env, RAY_ADDRESS=two.address, PBTFLOW_RAY_NODES="2",
                    PBTFLOW_RAY_NODES_TIMEOUT="120")
        follower = subprocess.Popen(
            command, cwd=tmp_path / "worker", text=True, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, start_new_session=True,
            env=dict(base, AZUREML_CR_NODE_RANK="1",
                     MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'worker.db'}"))
        uri = f"sqlite:///{tmp_path / 'head.db'}"
        head = subprocess.run(command, cwd=tmp_path / "head", capture_output=True, text=True,
                              timeout=600, env=dict(base, AZUREML_CR_NODE_RANK="0",
                                                    MLFLOW_TRACKING_URI=uri))
        assert head.returncode == 0, head.stderr[-4000:] + two.log_tail()
        assert "pbtflow: joined the Ray cluster at " in head.stderr
        assert ": 2 nodes, 2 CPUs, 0 GPUs" in head.stderr
        assert follower.poll() is None, "the other node waits while the head's Ray runs"
    finally:
        two.stop()
    try:
        out, _ = follower.communicate(timeout=120)
    finally:
        if follower.poll() is None:
            os.killpg(follower.pid, signal.SIGKILL)
    assert follower.returncode == 0, out[-3000:]
    assert "AZUREML_CR_NODE_RANK=1: not the head node" in out
    assert "has stopped; this node is done." in out
    assert not (tmp_path / "worker.db").exists(), "the other node never touched MLflow"
    assert sorted(p.name for p in (tmp_path / "worker").iterdir()) == []
    parents, children = runs_by_role(MlflowClient(uri), "ranks")
    assert len(parents) == 1 and len(children) == 2
    assert [p.name for p in (tmp_path / "shared-storage").iterdir()] == \
        [Path(parents[0].data.tags[names.STORAGE]).name]
