"""Where the population runs: a local Ray, or the running cluster (inside
an Azure ML job, Ray on every node), waited for until all its nodes are alive;
a node that is not the head follows the head's driver; a member larger than
the cluster is refused before any run is opened."""

from __future__ import annotations

import logging
import os
import time
from typing import Mapping

import ray

from pbtflow.experiment import ClusterError, Experiment, SettingError

log = logging.getLogger(__name__)


def init_ray(worker_logs: bool = True) -> None:
    """Join the running cluster when there is one (``$RAY_ADDRESS``, or inside
    an Azure ML job, where Azure ML has started Ray on every node), else start
    a local Ray. On a cluster, wait for ``$PBTFLOW_RAY_NODES`` nodes (the job
    sets it to its instance_count) so the population is placed on all of them."""
    if ray.is_initialized():
        return
    if joins_cluster():
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


def joins_cluster() -> bool:
    return bool(os.environ.get("RAY_ADDRESS") or os.environ.get("AZUREML_RUN_ID"))


def follower_rank() -> tuple[str, int] | None:
    """(variable, rank) when this process runs on a node other than the head of
    a cluster job: the head's driver tunes the population on every node."""
    from pbtflow.azureml import node_rank

    found = node_rank() if joins_cluster() else None
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


def check_resources(experiment: Experiment, total: Mapping[str, float] | None = None) -> None:
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
