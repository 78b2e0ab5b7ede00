"""Azure ML, offline: the shipped job and environment specs load with
azure-ai-ml, broken copies fail, every flag is a `pbtflow tune` flag, the
specs are what `pbtflow aml render` writes, sizing boundaries, submission
without a workspace or credential fails in one sentence with no network, and
a run with the environment of a job nests every trial under the job's run."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from pbtflow import azureml
from pbtflow.azureml import plan_cluster
from pbtflow.cli import build_parser, main, tune_overrides
from pbtflow.experiment import ExperimentError, from_sources
from conftest import REPO, run_entry

JOBS = sorted((REPO / "jobs").glob("*.yml"))
ENVIRONMENTS = sorted((REPO / "environments").glob("*.yml"))
_NO_NETWORK = textwrap.dedent("""
    import socket, sys
    def _refuse(*args, **kwargs):
        raise AssertionError("network access attempted")
    socket.socket.connect = socket.socket.connect_ex = _refuse
    socket.create_connection = socket.getaddrinfo = _refuse
""")


def test_the_jobs_and_environments_are_shipped():
    assert [p.name for p in JOBS] == ["ppo-gpu.yml", "ppo-parallel.yml", "ppo-round-robin.yml",
                                      "quadratic-smoke.yml"]
    assert [p.name for p in ENVIRONMENTS] == ["cpu.yml", "gpu.yml"]


# -- the shipped specs ---------------------------------------------------------------
@pytest.mark.parametrize("path", JOBS, ids=lambda p: p.name)
def test_job_spec_loads_offline_as_a_ray_command_job(path):
    from azure.ai.ml import RayDistribution
    from azure.ai.ml.entities import Command

    job = azureml.validate_job_file(path)
    raw = yaml.safe_load(path.read_text())
    assert isinstance(job, Command) and isinstance(job.distribution, RayDistribution)
    assert job.resources.instance_count == raw["resources"]["instance_count"] >= 1
    assert raw["environment_variables"][azureml.RAY_NODES_ENV] == str(job.resources.instance_count)
    assert raw["code"] == "../src" and raw["command"].startswith("python tune_ppo.py ")
    assert raw["outputs"]["checkpoints"] == {"type": "uri_folder", "mode": "rw_mount"}
    assert "--storage-path ${{outputs.checkpoints}}" in raw["command"]
    keys = [k for k in raw if k != "environment_variables"]
    assert keys == ["$schema", "code", "command", "inputs", "outputs", "environment", "compute",
                    "distribution", "resources", "experiment_name", "display_name"]


@pytest.mark.parametrize("path", ENVIRONMENTS, ids=lambda p: p.name)
def test_environment_spec_loads_offline(path):
    environment = azureml.validate_environment_file(path)
    assert environment.image.startswith("mcr.microsoft.com/azureml/")
    pip = environment.conda_file["dependencies"][-1]["pip"]
    assert any(line.startswith("azureml-mlflow") for line in pip)


@pytest.mark.parametrize("path", JOBS, ids=lambda p: p.name)
def test_every_flag_of_the_command_is_a_pbtflow_tune_flag(path):
    """The command, with the inputs filled in, parses with the real `pbtflow
    tune` parser and builds a valid Experiment."""
    raw = yaml.safe_load(path.read_text())
    experiment = _experiment_of_job(raw)
    plan = plan_cluster(experiment.population, experiment.num_env_runners if experiment.trainable
                        == "ppo" else 0, experiment.cpus_per_env_runner,
                        experiment.gpus_per_trial, cpus_per_trial_process=
                        experiment.cpus_per_trial_process, vm_size=_vm_size(path),
                        mode="round-robin" if "round-robin" in path.name else "parallel")
    assert experiment.cpus_per_trial == plan.cpus_per_trial
    assert raw["resources"]["instance_count"] == plan.instance_count


def _experiment_of_job(raw: dict):
    """What `pbtflow tune` builds from a job's command with its inputs filled in
    (as Azure ML substitutes them into the shell command)."""
    command = re.sub(r"\$\{\{inputs\.(\w+)\}\}", lambda m: str(raw["inputs"][m.group(1)]),
                     raw["command"]).replace("${{outputs.checkpoints}}", "/mnt/checkpoints")
    python, script, *args = shlex.split(command)
    assert (python, script) == ("python", "tune_ppo.py")
    flags = [a for a in args if a.startswith("--")]
    assert flags and set(flags) <= azureml.tune_flags()
    parsed = build_parser().parse_args(["tune", *args])  # exits on an unknown flag
    overrides = tune_overrides(parsed)
    return from_sources(None, overrides)


@pytest.mark.parametrize("factors", ["1.1,0.9", "1.1 0.9", "[1.1, 0.9]"])
def test_render_passes_the_pbt_options_to_the_job(tmp_path, capsys, factors):
    out = tmp_path / "pbt-options.yml"
    assert main(["aml", "render", "--population", "4", "--cpus-per-node", "8",
                 "--set", "burn_in_period=6", "--set", f"perturbation_factors={factors}",
                 "--set", "explore=my_explore:gentle", "-o", str(out)]) == 0
    experiment = _experiment_of_job(yaml.safe_load(out.read_text()))
    assert experiment.burn_in_period == 6.0
    assert experiment.perturbation_factors == (1.1, 0.9)
    assert experiment.explore == "my_explore:gentle"


def _vm_size(path: Path) -> str:
    return re.search(r"--vm-size (\S+)", path.read_text().splitlines()[0]).group(1)


@pytest.mark.parametrize("path", JOBS, ids=lambda p: p.name)
def test_shipped_spec_is_what_render_writes(path, tmp_path, capsys):
    header = path.read_text().splitlines()[0]
    prefix, suffix = "# Rendered by: pbtflow aml render ", " -o FILE"
    assert header.startswith(prefix) and header.endswith(suffix)
    args = shlex.split(header[len(prefix):-len(suffix)])
    out = tmp_path / path.name
    assert main(["aml", "render", *args, "-o", str(out)]) == 0
    assert out.read_text() == path.read_text()
    assert f"instance_count:    {yaml.safe_load(out.read_text())['resources']['instance_count']} " \
        in capsys.readouterr().out


# -- broken copies ---------------------------------------------------------------------
def _copy(folder: Path, source: Path, edit) -> Path:
    """An edited copy of ``source`` in ``folder``, with code pointing at the real src/."""
    text = source.read_text().replace("code: ../src", f"code: {REPO / 'src'}")
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / source.name
    target.write_text(edit(text))
    return target


def _instance_count(value: str):
    return lambda t: t.replace("instance_count: 2", f"instance_count: {value}")


BROKEN_JOBS = {
    "instance_count 0": (_instance_count("0"), "instance_count: must be a whole number of nodes, "
                         "1 or more, but got 0"),
    "instance_count -3": (_instance_count("-3"), "but got -3"),
    "instance_count 2.5": (_instance_count("2.5"), "but got 2.5"),
    "instance_count two": (_instance_count("two"), "resources.instance_count: Not a valid integer"),
    "undefined input": (lambda t: t.replace("${{inputs.population}}", "${{inputs.pop}}"),
                        "references ${{inputs.pop}}, but ppo-parallel.yml defines no inputs.pop"),
    "undefined output": (lambda t: t.replace("${{outputs.checkpoints}}", "${{outputs.ckpt}}"),
                         "defines no outputs.ckpt"),
    "unknown flag": (lambda t: t.replace("--num-env-runners", "--num-workers"),
                     "--num-workers is not a `pbtflow tune` flag"),
    "node count differs": (lambda t: t.replace("PBTFLOW_RAY_NODES: '2'", "PBTFLOW_RAY_NODES: '3'"),
                           "PBTFLOW_RAY_NODES: must equal resources.instance_count (2)"),
    "distribution": (lambda t: t.replace("type: ray", "type: rays"),
                     "distribution.type: Value 'rays' passed is not in set ['ray']"),
    "output mode": (lambda t: t.replace("mode: rw_mount", "mode: rw"), "checkpoints"),
    "unknown field": (lambda t: t + "instance_type: big\n", "instance_type: Unknown field"),
    "no command": (lambda t: re.sub(r"command: >-\n(  .*\n)+", "", t), "command"),
    "code elsewhere": (lambda t: re.sub(r"code: .*", f"code: {REPO / 'tests'}", t),
                       "code: must be the folder holding tune_ppo.py"),
    "not YAML": (lambda t: t.replace("inputs:", "inputs: [", 1), "is not valid YAML at line"),
}


@pytest.mark.parametrize("name", BROKEN_JOBS)
def test_broken_job_copy_fails(tmp_path, name):
    edit, words = BROKEN_JOBS[name]
    intact = _copy(tmp_path / "intact", REPO / "jobs" / "ppo-parallel.yml", lambda t: t)
    azureml.validate_job_file(intact)  # the copy itself is fine
    broken = _copy(tmp_path / "broken", REPO / "jobs" / "ppo-parallel.yml", edit)
    assert broken.read_text() != intact.read_text()
    with pytest.raises(ExperimentError) as caught:
        azureml.validate_job_file(broken)
    message = str(caught.value)
    assert words in message and "\n" not in message and message.endswith(".")


@pytest.mark.parametrize("value", ["0", "-3", "2.5"])
def test_load_job_alone_accepts_bad_instance_counts(tmp_path, value):
    """Why validate_job_file checks instance_count itself."""
    from azure.ai.ml import load_job

    job = load_job(_copy(tmp_path, REPO / "jobs" / "ppo-parallel.yml", _instance_count(value)))
    assert job.resources.instance_count == int(float(value))


BROKEN_ENVIRONMENTS = {
    "missing conda file": (lambda t: t.replace("../conda.yml", "../no-such.yml"), "no-such.yml"),
    "unknown field": (lambda t: t + "gpu: true\n", "gpu: Unknown field"),
    "no image": (lambda t: re.sub(r"image: .*\n", "", t), "must name a base image"),
}


@pytest.mark.parametrize("name", BROKEN_ENVIRONMENTS)
def test_broken_environment_copy_fails(tmp_path, name):
    edit, words = BROKEN_ENVIRONMENTS[name]
    folder = tmp_path / "environments"
    folder.mkdir()
    (tmp_path / "conda.yml").write_text((REPO / "conda.yml").read_text())
    path = folder / "cpu.yml"
    path.write_text((REPO / "environments" / "cpu.yml").read_text())
    azureml.validate_environment_file(path)
    path.write_text(edit(path.read_text()))
    with pytest.raises(ExperimentError, match=re.escape(words)):
        azureml.validate_environment_file(path)


# -- sizing ----------------------------------------------------------------------------
def test_parallel_runs_every_trial_at_once():
    plan = plan_cluster(8, 3, vm_size="Standard_D16s_v3")
    assert (plan.cpus_per_trial, plan.trials_per_node, plan.instance_count,
            plan.concurrent_trials, plan.wall_time_factor) == (4, 4, 2, 8, 1)


@pytest.mark.parametrize("population, nodes", [(4, 1), (5, 2), (8, 2), (9, 3)])
def test_parallel_node_count_at_the_boundaries(population, nodes):
    assert plan_cluster(population, 3, vm_size="Standard_D16s_v3").instance_count == nodes


def test_round_robin_shares_slots_and_says_what_it_costs():
    plan = plan_cluster(8, 3, vm_size="Standard_D16s_v3", mode="round-robin")
    assert (plan.instance_count, plan.concurrent_trials, plan.trials_per_slot,
            plan.wall_time_factor, plan.parallel_instance_count) == (1, 4, 2, 2, 2)
    assert "8 trials share 4 slots, up to 2 per slot" in plan.explain()
    assert "about 2x the wall time" in plan.explain()
    three = plan_cluster(8, 3, vm_size="Standard_D8s_v3", mode="round-robin", instance_count=3)
    assert (three.trials_per_node, three.concurrent_trials, three.trials_per_slot) == (2, 6, 2)


def test_round_robin_with_room_for_everyone_is_an_error():
    with pytest.raises(ExperimentError, match=r"mode: round-robin needs fewer slots than trials.*"
                       r"use --mode parallel \(instance_count 2\)"):
        plan_cluster(8, 3, vm_size="Standard_D16s_v3", mode="round-robin", instance_count=2)


@pytest.mark.parametrize("runners, ok", [(15, True), (16, False)])
def test_a_trial_larger_than_one_node_is_an_error(runners, ok):
    if ok:
        assert plan_cluster(2, runners, vm_size="Standard_D16s_v3").trials_per_node == 1
        return
    with pytest.raises(ExperimentError, match="one trial needs 17 CPUs .* a Standard_D16s_v3 node has "
                       "16: a trial larger than one node cannot be placed"):
        plan_cluster(2, runners, vm_size="Standard_D16s_v3")


def test_gpu_trials_count_gpus_per_node():
    with pytest.raises(ExperimentError, match="gpus_per_trial: one trial needs 1 GPUs, but a "
                       "Standard_D16s_v3 node has 0"):
        plan_cluster(2, 1, gpus_per_trial=1, vm_size="Standard_D16s_v3")
    assert plan_cluster(4, 1, gpus_per_trial=1, vm_size="Standard_NC16as_T4_v3").instance_count == 4
    half = plan_cluster(4, 1, gpus_per_trial=0.5, vm_size="Standard_NC16as_T4_v3")
    assert (half.trials_per_node, half.instance_count) == (2, 2)  # GPUs, not CPUs, limit it


def test_a_retired_vm_size_is_refused_with_current_ones_named():
    with pytest.raises(ExperimentError) as error:
        plan_cluster(4, 1, gpus_per_trial=1, vm_size="Standard_NC6s_v3")
    assert str(error.value).startswith("vm_size: Standard_NC6s_v3 cannot be created any more (the "
                                       "NCv3 series was retired by Azure on 2025-09-30)")
    assert "Standard_NC4as_T4_v3" in str(error.value) and "Standard_NC6s_v3" not in azureml.VM_SIZES


def test_every_gpu_family_is_in_the_table_with_its_gpus():
    gpus = {name: size.gpus for name, size in azureml.VM_SIZES.items() if size.gpus}
    for family in ("T4_v3", "A100_v4", "H100_v5"):
        assert any(name.endswith(family) for name in gpus), family
    assert gpus["Standard_ND96isr_H100_v5"] == 8 and gpus["Standard_NC4as_T4_v3"] == 1


def test_a_gpu_job_renders_against_the_gpu_environment_and_cluster(tmp_path):
    out = tmp_path / "gpu.yml"
    assert main(["aml", "render", "--population", "4", "--gpus-per-trial", "0.5",
                 "--vm-size", "Standard_NC24ads_A100_v4", "-o", str(out)]) == 0
    raw = yaml.safe_load(out.read_text())
    assert (raw["environment"], raw["compute"]) == (azureml.GPU_ENVIRONMENT, "azureml:gpu-cluster")
    assert _experiment_of_job(raw).gpus_per_trial == 0.5
    cpu = tmp_path / "cpu.yml"
    assert main(["aml", "render", "--population", "4", "--vm-size", "Standard_D8s_v5",
                 "-o", str(cpu)]) == 0
    raw = yaml.safe_load(cpu.read_text())
    assert (raw["environment"], raw["compute"]) == (azureml.CPU_ENVIRONMENT, "azureml:cpu-cluster")


def test_unknown_vm_size_asks_for_cpus_per_node():
    with pytest.raises(ExperimentError, match="vm_size: 'Standard_E64s_v5' is not in pbtflow's table.*"
                       "pass its vCPUs as --cpus-per-node N"):
        plan_cluster(4, 1, vm_size="Standard_E64s_v5")
    plan = plan_cluster(4, 1, cpus_per_node=64)
    assert (plan.vm_size, plan.trials_per_node, plan.instance_count) == (None, 32, 1)
    assert plan_cluster(4, 1, vm_size="standard_d8s_v3").vm_size == "Standard_D8s_v3"


@pytest.mark.parametrize("kwargs, words", [
    ({}, "cpus_per_node: sizing needs the node size, but got neither --vm-size nor --cpus-per-node"),
    ({"vm_size": "Standard_D8s_v3", "cpus_per_node": 8}, "vm_size: give the node size once"),
    ({"cpus_per_node": 0}, "cpus_per_node: must be a whole number of vCPUs, 1 or more, but got 0"),
    ({"cpus_per_node": 8, "instance_count": 3}, "instance_count: parallel mode runs all 4 trials at "
     "once on 1 8-CPU nodes"),
    ({"cpus_per_node": 8, "mode": "round-robin", "instance_count": 0}, "instance_count: must be a "
     "whole number of nodes, 1 or more, but got 0"),
    ({"cpus_per_node": 8, "mode": "serial"}, "mode: must be one of parallel, round-robin"),
])
def test_bad_sizing_input_names_the_input(kwargs, words):
    with pytest.raises(ExperimentError) as caught:
        plan_cluster(4, 1, **kwargs)
    assert words in str(caught.value)


def test_population_below_two_is_an_error():
    with pytest.raises(ExperimentError, match="population: PBT needs at least 2 members, but got 1"):
        plan_cluster(1, 0, cpus_per_node=4)


def test_size_json_prints_one_object(capsys):
    assert main(["aml", "size", "--population", "8", "--num-env-runners", "3",
                 "--vm-size", "Standard_D16s_v3", "--mode", "round-robin", "--json"]) == 0
    out = capsys.readouterr().out
    plan = json.loads(out)
    assert out.count("\n") == 1
    assert {"instance_count": 1, "concurrent_trials": 4, "cpus_per_trial": 4.0,
            "mode": "round-robin", "trials_per_slot": 2}.items() <= plan.items()


@pytest.mark.parametrize("args, words", [
    (["size", "--population", "8", "--vm-size", "Standard_Z9"], "--cpus-per-node"),
    (["size", "--population", "4", "--num-env-runners", "8", "--vm-size", "Standard_DS3_v2"],
     "a trial larger than one node cannot be placed"),
    (["render", "--population", "4", "--cpus-per-node", "8", "--set", "stop_iter=3"],
     "set: 'stop_iter' is not a `pbtflow tune` setting"),
    (["render", "--population", "4", "--cpus-per-node", "8", "--set", "population=6"],
     "set: 'population' is set by the job itself"),
    (["render", "--population", "4", "--cpus-per-node", "8", "--env", "CartPole-v9"],
     "env: 'CartPole-v9' is not a registered gymnasium environment id"),
    (["render", "--population", "4", "--cpus-per-node", "8", "--trainable", "quadratic",
      "--num-env-runners", "2"], "num_env_runners: only RLlib trainables have env runners"),
    (["submit", "no/such/job.yml", "--subscription", "s", "--resource-group", "g",
      "--workspace", "w"], "job: no such file 'no/such/job.yml'"),
])
def test_aml_input_errors_are_one_sentence(capsys, args, words):
    assert main(["aml", *args]) == 2
    err = capsys.readouterr().err
    assert words in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_size_does_not_import_the_azure_sdk():
    code = ("import sys; from pbtflow.cli import main; "
            "main(['aml', 'size', '--population', '4', '--cpus-per-node', '8']); "
            "assert 'azure.ai.ml' not in sys.modules and 'ray' not in sys.modules")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "trials per node:   8" in proc.stdout


def test_missing_azure_extra_names_it(tmp_path):
    code = ("import sys; sys.modules['azure.ai.ml'] = None; from pbtflow.cli import main; "
            f"sys.exit(main(['aml', 'submit', {str(REPO / 'jobs' / 'ppo-parallel.yml')!r}, "
            "'--subscription', 's', '--resource-group', 'g', '--workspace', 'w']))")
    proc = subprocess.run([sys.executable, "-c", _NO_NETWORK + code], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 5  # AzureMLError
    assert "azure: the Azure ML SDK (azure-ai-ml) is not installed; pip install 'pbtflow[azure]'." \
        in proc.stderr


# -- submission, offline -----------------------------------------------------------------
def _submit(*args: str, env: dict | None = None, cwd: Path = REPO) -> subprocess.CompletedProcess:
    """`pbtflow aml submit ...` in a process whose sockets refuse to connect."""
    code = _NO_NETWORK + f"from pbtflow.cli import main; sys.exit(main(['aml', 'submit', *{list(args)!r}]))"
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("AZURE_")}
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          cwd=cwd, env=full_env)


@pytest.mark.parametrize("args, words", [
    ([], "workspace: submitting needs an Azure ML workspace, but got no --subscription, "
         "--resource-group, --workspace; pass --workspace-config PATH"),
    (["--subscription", "s"], "but got no --resource-group, --workspace;"),
    (["--workspace-config", "nowhere/config.json"], "workspace_config: no such file "
                                                    "'nowhere/config.json'"),
    (["--workspace-config", "config.json", "--workspace", "w"], "workspace: give the workspace once"),
])
def test_submit_without_a_workspace_fails_in_one_sentence(args, words):
    proc = _submit("jobs/ppo-parallel.yml", *args)
    assert proc.returncode == 2, proc.stderr
    assert words in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
    assert "network access attempted" not in proc.stderr


def test_submit_with_an_incomplete_workspace_config_names_the_missing_keys(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"subscription_id": "s"}))
    proc = _submit(str(REPO / "jobs" / "ppo-parallel.yml"), "--workspace-config", "config.json",
                   cwd=tmp_path)
    assert proc.returncode == 2
    assert "lacks resource_group, workspace_name" in proc.stderr


def test_submit_without_credentials_fails_in_one_sentence(tmp_path):
    """A workspace but no credential: DefaultAzureCredential restricted to the
    environment credential, with none of its variables set, signs in offline."""
    (tmp_path / "config.json").write_text(json.dumps(
        {"subscription_id": "00000000-0000-0000-0000-000000000000", "resource_group": "rg",
         "workspace_name": "ws"}))
    proc = _submit(str(REPO / "jobs" / "quadratic-smoke.yml"), "--workspace-config", "config.json",
                   cwd=tmp_path, env={"AZURE_TOKEN_CREDENTIALS": "EnvironmentCredential"})
    assert proc.returncode == 5, proc.stderr[-2000:]  # AzureMLError
    assert "pbtflow: error: credentials: no Azure credential could sign in" in proc.stderr
    assert "run `az login`" in proc.stderr and "network access attempted" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr


# -- inside a job: the job's MLflow run is the parent ----------------------------------------
def test_run_with_a_jobs_environment_nests_trials_under_the_jobs_run(tmp_path):
    """The environment variables an Azure ML job sets (tracking URI, the job's
    run and experiment): every child names the job's run as its parent, and
    pbtflow leaves that run for Azure ML to end."""
    from mlflow.tracking import MlflowClient

    from pbtflow import names

    uri = f"sqlite:///{tmp_path / 'workspace.db'}"
    client = MlflowClient(uri)
    experiment_id = client.create_experiment("azureml-job")
    job_run = client.create_run(experiment_id, run_name="job").info.run_id
    env = {"MLFLOW_TRACKING_URI": uri, "MLFLOW_RUN_ID": job_run,
           "MLFLOW_EXPERIMENT_ID": experiment_id}
    # The cheap trainable: what is checked here is where the runs go, not PPO.
    proc = run_entry("--smoke", "--trainable", "quadratic", cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]

    runs = client.search_runs([experiment_id])
    children = [r for r in runs if r.info.run_id != job_run]
    assert len(children) == 2
    assert all(c.data.tags[names.PARENT_RUN_ID] == job_run for c in children)
    assert all(c.info.status == "FINISHED" for c in children)
    job = client.get_run(job_run)
    assert job.info.status == "RUNNING"  # Azure ML ends the job's run, not pbtflow
    assert job.data.params["population"] == "2"
    assert client.get_experiment_by_name("pbt") is None  # nothing went elsewhere


def test_a_smoke_job_keeps_the_plans_population(capsys):
    assert main(["aml", "render", "--population", "4", "--cpus-per-node", "8", "--set", "smoke=true"]) == 0
    text = capsys.readouterr().out
    assert "  population: 4\n" in text and "--smoke" in text


def test_node_rank_is_read_from_the_runtimes_variables(monkeypatch):
    from pbtflow.cluster import follower_rank

    for name in azureml.NODE_RANK_ENVS + ("RAY_ADDRESS", "AZUREML_RUN_ID"):
        monkeypatch.delenv(name, raising=False)
    assert azureml.node_rank() is None
    monkeypatch.setenv("NODE_RANK", "1")
    assert azureml.node_rank() == ("NODE_RANK", 1)
    assert follower_rank() is None  # outside a cluster job a leftover rank means nothing
    monkeypatch.setenv("AZUREML_RUN_ID", "job-1")
    assert follower_rank() == ("NODE_RANK", 1)
    monkeypatch.setenv("AZUREML_CR_NODE_RANK", "0")  # Azure ML's own variable comes first
    assert follower_rank() is None
    monkeypatch.setenv("AZUREML_CR_NODE_RANK", "head")
    with pytest.raises(ExperimentError, match=r"^AZUREML_CR_NODE_RANK: must be a node rank"):
        azureml.node_rank()
