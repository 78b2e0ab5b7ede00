"""Bad input through the real entry script: one sentence, exit code 2 (4 for
a trial larger than this machine), no traceback, and no Ray started."""

import re
import subprocess
import sys

import pytest

from conftest import free_port, run_entry

# A line a Ray worker printed, as Ray's log monitor forwards it to the driver:
# "(PPO pid=830) ..." after an optional colour code.
WORKER_LINE = re.compile(r"^(\x1b\[\d+m)?\([^()]*(\([^()]*\))?[^()]*pid=\d+[^)]*\)")


@pytest.mark.parametrize("args, words", [
    (["--env", "CartPole-v9"], "env: 'CartPole-v9' is not a registered gymnasium environment id"),
    (["--population", "two"], "population: expected int, but got 'two'"),
    (["--quantile-fraction", "0.9"], "quantile_fraction: must lie in [0, 0.5]"),
    (["--perturbation-interval", "0"], "perturbation_interval: must be positive"),
    (["--no-such-flag"], "unrecognized arguments: --no-such-flag"),
    (["--config", "missing.yaml"], "config: no such file"),
])
def test_bad_flags_fail_fast(tmp_path, args, words):
    proc = run_entry(*args, cwd=tmp_path, timeout=120)
    assert proc.returncode == 2
    assert words in proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "mlflow.db").exists()


def test_a_bad_setting_is_refused_before_tune_and_mlflow_are_imported():
    """The setting is checked before the tuning stack (Ray Tune, MLflow: 2.5 s
    of imports) is loaded, and PBT does not load PB2's scikit-learn at all."""
    code = ("import sys; from pbtflow.cli import main; "
            "assert main(['tune', '--population', '0']) == 2; "
            "assert not {'ray.tune', 'mlflow', 'torch'} & set(sys.modules), sys.modules.keys(); "
            "import pbtflow.tuning; assert 'sklearn' not in sys.modules")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "population: PBT needs at least 2 members" in proc.stderr


@pytest.mark.parametrize("text, words", [
    ("population: [4\n", "is not valid YAML at line 2"),
    ("env: CartPole-v1\nstop_iter: 3\n", "unknown key 'stop_iter'"),
])
def test_bad_yaml_fails_fast(tmp_path, text, words):
    (tmp_path / "exp.yaml").write_text(text)
    proc = run_entry("--config", "exp.yaml", cwd=tmp_path, timeout=120)
    assert proc.returncode == 2 and words in proc.stderr and "Traceback" not in proc.stderr


def test_unreachable_tracking_server_fails_before_ray(tmp_path):
    uri = f"http://127.0.0.1:{free_port()}"
    proc = run_entry("--smoke", "--tracking-uri", uri, cwd=tmp_path, timeout=120)
    assert proc.returncode == 3  # TrackingError
    assert f"tracking_uri: the MLflow tracking server at {uri} is not reachable" in proc.stderr
    assert "Started a local Ray instance" not in proc.stdout + proc.stderr


def test_help_lists_every_setting(tmp_path):
    proc = run_entry("--help", cwd=tmp_path, timeout=120)
    assert proc.returncode == 0
    for flag in ("--env", "--population", "--stop-iters", "--stop-return", "--time-attr",
                 "--perturbation-interval", "--quantile-fraction", "--resample-probability",
                 "--synch", "--num-env-runners", "--experiment-name", "--tracking-uri",
                 "--storage-path", "--seed", "--smoke", "--config"):
        assert flag in proc.stdout


@pytest.mark.parametrize("args, code, words", [
    (["--resample-probability", "1.5"], 2, "resample_probability: must lie in [0, 1]"),
    (["--checkpoint-interval", "2", "--perturbation-interval", "3"], 2,
     "checkpoint_interval: must divide perturbation_interval=3"),
    (["--population", "1"], 2, "population: PBT needs at least 2 members"),
    (["--trainable", "nosuchpackage.module:function"], 2, "trainable"),
    (["--num-env-runners", "64"], 4, "num_env_runners: one trial needs"),  # ClusterError
    (["--trainable", "sac", "--env", "CartPole-v1"], 2, "env: 'CartPole-v1' has discrete actions, but SAC"),
    (["--trainable", "dqn", "--env", "Pendulum-v1"], 2, "env: 'Pendulum-v1' has continuous actions, but DQN"),
    (["--trainable", "appo"], 2, "mutations: pbtflow has no search space for 'appo'"),
])
def test_more_bad_inputs_fail_before_ray(tmp_path, args, code, words):
    proc = run_entry(*args, cwd=tmp_path, timeout=120)
    assert proc.returncode == code, proc.stderr[-2000:]
    assert words in proc.stderr and "Traceback" not in proc.stderr
    assert "Started a local Ray instance" not in proc.stdout + proc.stderr
    assert not (tmp_path / "mlflow.db").exists()


def test_a_key_rllib_does_not_know_fails_with_the_closest_one(tmp_path):
    (tmp_path / "exp.yaml").write_text("trainable: sac\ninitial:\n  actor_learning_rate: 0.001\n")
    proc = run_entry("--config", "exp.yaml", cwd=tmp_path, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "initial.actor_learning_rate: RLlib's SACConfig has no setting" in proc.stderr
    assert "did you mean 'actor_lr'?" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "mlflow.db").exists()


def test_mutation_of_a_wrong_type_in_yaml(tmp_path):
    (tmp_path / "exp.yaml").write_text("mutations:\n  lr: 0.001\n")
    proc = run_entry("--config", "exp.yaml", cwd=tmp_path, timeout=120)
    assert proc.returncode == 2
    assert "mutations.lr: a mutation must be a list, a Tune domain" in proc.stderr


def test_a_metric_never_reported_stops_the_run_with_one_sentence(tmp_path):
    proc = run_entry("--smoke", "--metric", "episode_reward_mean", "--verbose", cwd=tmp_path, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "metric: the trainable never reports 'episode_reward_mean'" in proc.stderr
    # --verbose forwards what the members print (quiet by default: test_pipeline)
    assert any(WORKER_LINE.match(line) for line in proc.stderr.splitlines()), proc.stderr[-2000:]
    # The driver's own output holds no traceback. A PPO actor that Ray stops
    # with SIGTERM while Python runs a finaliser may print one of its own
    # (Ray's worker raises SystemExit there): that is the worker's, not the run's.
    driver = [line for line in proc.stderr.splitlines() if not WORKER_LINE.match(line)]
    assert not [line for line in driver if "Traceback" in line], "\n".join(driver[-40:])


def test_quiet_console_restores_what_it_silenced():
    import logging
    import warnings

    from pbtflow.cli import QUIET_LOGGERS, _quiet_console

    logging.getLogger("ray.tune").setLevel(logging.INFO)
    before = {name: logging.getLogger(name).level for name in QUIET_LOGGERS}
    filters = list(warnings.filters)
    with _quiet_console():
        assert logging.getLogger("ray.tune").level == logging.ERROR
        with warnings.catch_warnings(record=True) as caught:
            warnings.warn("inside", DeprecationWarning)
        assert caught == []
    assert {name: logging.getLogger(name).level for name in QUIET_LOGGERS} == before
    assert warnings.filters == filters
