"""The mutation grammar, the explore function (pbtflow's clipping, the user's
explore function, the trainable's repair) and Ray's PBT options on a real run,
checked against Ray's own log and Tune's result rows."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from ray import tune

import pbtflow
from pbtflow import names
from pbtflow.experiment import ExperimentError
from pbtflow.pbt import ExploreError, bounds_of, check_mutations, flatten_keys, make_explore, to_mutation
from pbtflow.trainables.ppo import PRESETS, repair
from mlflow_checks import assert_record_is_true, runs_by_role


def test_yaml_domains_become_tune_domains():
    m = check_mutations({"a": {"uniform": [0.9, 1.0]}, "b": {"randint": [1, 31]},
                         "c": {"choice": [1, 2]}, "d": [1e-3, 1e-4],
                         "nested": {"x": {"loguniform": [1e-5, 1e-3]}},
                         "e": {"qloguniform": [5e-3, 1e-1, 5e-4]}})
    assert bounds_of(m["a"]) == (0.9, 1.0, False)
    assert bounds_of(m["b"]) == (1.0, 30.0, True)
    assert bounds_of(m["d"]) == (1e-4, 1e-3, False)
    assert flatten_keys(m) == ["a", "b", "c", "d", "nested.x", "e"]


def test_callables_and_domains_pass_through():
    fn = lambda: 3  # noqa: E731
    domain = tune.uniform(0, 1)
    assert to_mutation(fn) is fn and to_mutation(domain) is domain


@pytest.mark.parametrize("bad", [3, "lr", None, [], {}])
def test_wrong_mutation_types_are_rejected(bad):
    with pytest.raises(ExperimentError, match="mutations"):
        check_mutations({"lr": bad})


@pytest.mark.parametrize("preset", list(PRESETS.values()), ids=list(PRESETS))
@pytest.mark.parametrize("hostile", [
    {"lambda": 7.0, "clip_param": -1.0, "lr": 0.5, "num_epochs": 0,
     "minibatch_size": 10**9, "train_batch_size_per_learner": 1},
    {"lambda": float("nan"), "clip_param": float("inf"), "lr": None, "num_epochs": -5,
     "minibatch_size": "x", "train_batch_size_per_learner": float("-inf")},
    {"lambda": 0.0, "clip_param": 0.0, "lr": 0.0, "num_epochs": 0.4,
     "minibatch_size": 0, "train_batch_size_per_learner": 0},
])
def test_explore_repairs_hostile_ppo_configs(preset, hostile):
    mutations = check_mutations(preset["mutations"])
    config = make_explore(mutations, repair)(dict(hostile, kl_coeff=1.0))
    for key in flatten_keys(mutations):
        low, high, _ = bounds_of(mutations[key])
        assert low <= config[key] <= high, (key, config[key])
        assert math.isfinite(config[key])
    assert config["num_epochs"] >= 1 and isinstance(config["num_epochs"], int)
    assert config["train_batch_size_per_learner"] >= 2 * config["minibatch_size"]
    assert config["kl_coeff"] == 1.0  # not mutated: untouched


def test_repair_shrinks_the_minibatch_when_the_batch_bound_forbids_growing():
    config = {"num_epochs": 3, "minibatch_size": 900, "train_batch_size_per_learner": 1000}
    repair(config, {"train_batch_size_per_learner": (500, 1200)})
    assert config == {"num_epochs": 3, "minibatch_size": 600, "train_batch_size_per_learner": 1200}


def test_users_explore_runs_after_the_clipping_and_before_the_repair():
    mutations = check_mutations({"lr": {"uniform": [0.001, 0.1]}, "momentum": [0.0, 0.5, 0.9]})
    seen = []

    def users(config):
        seen.append(("users", config["lr"]))
        config["momentum"] = 0.9
        return config

    def trainables_repair(config, bounds):
        seen.append(("repair", config["momentum"]))

    config = make_explore(mutations, trainables_repair, users, "mine:users")(
        {"lr": 0.5, "momentum": 0.0, "start": 1.0})
    assert seen == [("users", 0.1), ("repair", 0.9)]  # lr clipped first; repair sees the user's
    assert config == {"lr": 0.1, "momentum": 0.9, "start": 1.0}


@pytest.mark.parametrize("users, words", [
    (lambda c: None, "explore: 'mine:bad' must return the config dict, but returned NoneType"),
    (lambda c: [c], "must return the config dict, but returned list"),
    (lambda c: {**c, "start": 2.0}, "'mine:bad' changed start, which PBT does not mutate"),
    (lambda c: {k: v for k, v in c.items() if k != "start"}, "changed start, which PBT"),
    (lambda c: {**c, "model": {"depth": 3}}, "changed model.depth, which PBT"),
])
def test_a_users_explore_that_breaks_its_contract_is_named(users, words):
    mutations = check_mutations({"lr": {"uniform": [0.001, 0.1]}, "opt": {"beta": [0.9, 0.99]}})
    explore = make_explore(mutations, None, users, "mine:bad")
    with pytest.raises(ExploreError) as error:
        explore({"lr": 0.01, "opt": {"beta": 0.9}, "start": 1.0})
    assert words in str(error.value) and str(error.value).count(". ") == 0


def test_a_users_explore_may_change_nested_mutated_keys():
    mutations = check_mutations({"opt": {"beta": [0.9, 0.99]}})

    def users(config):
        config["opt"]["beta"] = 0.99
        return config

    assert make_explore(mutations, None, users, "mine:ok")({"opt": {"beta": 0.9}}) == {
        "opt": {"beta": 0.99}}


CLIMB = dict(trainable="plain_trainables:climb", metric="height", population=2, stop_iters=10,
             perturbation_interval=2, synch=True, quantile_fraction=0.5, resample_probability=0.0,
             initial={"lr": 0.05, "momentum": 0.5, "start": 1.0},
             mutations={"lr": {"uniform": [0.001, 0.1]}, "momentum": [0.0, 0.5, 0.9]}, seed=3)


def _ray_log(results) -> list[list]:
    text = (Path(results.experiment_path) / "pbt_global.txt").read_text()
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_burn_in_factors_and_a_users_explore_on_a_real_run(ray_runtime, workdir):
    """Burn-in 4 with a perturbation every 2 iterations: no member is ranked
    before iteration 4; factors 1.1/0.9 (no resampling) move lr by exactly those
    factors (or to a bound); the user's explore ties momentum to lr in every new
    config; the MLflow record still agrees with Ray's log."""
    results = pbtflow.tune(pbtflow.Experiment(**CLIMB, burn_in_period=4, perturbation_factors=(1.1, 0.9),
                                              explore="user_trainables:momentum_follows_lr",
                                              experiment_name="options"))
    assert results.num_errors == 0
    log = _ray_log(results)  # [target, donor, target iter, donor iter, donor config, new config]
    assert len(log) >= 2, log
    for _, _, _, _, old, new in log:
        ratio = new["lr"] / old["lr"]
        assert (math.isclose(ratio, 1.1) or math.isclose(ratio, 0.9)
                or new["lr"] in (0.001, 0.1)), (old["lr"], new["lr"])
        assert new["momentum"] == (0.9 if new["lr"] >= 0.05 else 0.5), new
        assert new["start"] == 1.0
    # Tune's own rows, recomputed: climb adds lr (1 + momentum) - 0.1 lr^2 per step,
    # so every member follows its (shared) first config exactly through the burn-in.
    step = 0.05 * 1.5 - 0.1 * 0.05 ** 2
    followed = []
    for result in results:
        frame = result.metrics_dataframe.set_index("training_iteration")
        assert [frame.loc[i, "height"] for i in range(1, 5)] == pytest.approx(
            [i * step for i in range(1, 5)], rel=1e-12)
        followed.append(frame["height"].to_numpy() == pytest.approx(step * frame.index.to_numpy()))
    assert not all(followed)  # and PBT did act after it
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    parents, _ = runs_by_role(client, "options")
    params = parents[0].data.params
    assert (params["burn_in_period"], params["explore"]) == ("4.0", "user_trainables:momentum_follows_lr")
    assert params["perturbation_factors"] in ("(1.1, 0.9)", "[1.1, 0.9]")
    assert assert_record_is_true(client, parents[0].info.run_id, results)["exploits"] == len(log)


@pytest.mark.parametrize("explore, words", [
    ("explore_returns_nothing", "must return the config dict, but returned NoneType"),
    ("explore_changes_a_constant", "changed start, which PBT does not mutate"),
])
def test_a_broken_explore_fails_the_experiment_in_one_sentence(ray_runtime, workdir, explore, words):
    path = f"user_trainables:{explore}"
    with pytest.raises(ExperimentError) as error:
        pbtflow.tune(pbtflow.Experiment(**CLIMB, explore=path, experiment_name="broken"))
    message = str(error.value)
    assert message.startswith(f"explore: {path!r} ") and words in message, message
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    parents, children = runs_by_role(client, "broken")
    assert parents[0].info.status == "FAILED" and parents[0].data.tags[names.ERROR] == message
    assert len(children) == 2 and all(c.info.status != "RUNNING" for c in children)
    assert all(c.data.metrics["height"] > 0 for c in children)  # what was recorded stays


@pytest.mark.parametrize("path, words", [
    ("no_such_module:explore", "explore: 'no_such_module' must be an importable module, but got "
                               "explore='no_such_module:explore' (ModuleNotFoundError"),
    ("user_trainables:NOT_A_FUNCTION", "explore: 'user_trainables:NOT_A_FUNCTION' must name a "
                                       "function taking the config dict, but got a int"),
    ("user_trainables:explore_two_arguments", "must accept exactly one argument (the config dict)"),
])
def test_a_bad_explore_path_fails_before_ray_in_one_sentence(path, words, workdir, monkeypatch):
    from pbtflow import cluster

    monkeypatch.setattr(cluster, "init_ray", lambda *_: pytest.fail("reached Ray"))
    with pytest.raises(ExperimentError) as error:
        pbtflow.tune(pbtflow.Experiment(**CLIMB, explore=path))
    assert words in str(error.value) and str(error.value).count(". ") == 0, str(error.value)
    assert not (workdir / "mlflow.db").exists()


def test_pb2_bounds_come_from_the_mutations():
    from pbtflow.pbt import pb2_bounds

    bounds = pb2_bounds(check_mutations({"lr": {"loguniform": [1e-5, 1e-3]}, "epochs": {"randint": [1, 31]},
                                         "gamma": [0.99, 0.9, 0.95], "opt": {"beta": {"uniform": [0.8, 0.9]}}}))
    assert bounds == {"lr": [1e-5, 1e-3], "epochs": [1.0, 30.0], "gamma": [0.9, 0.99],
                      "opt": {"beta": [0.8, 0.9]}}
    for bad in ({"act": ["relu", "tanh"]}, {"act": {"choice": ["relu", "tanh"]}}):
        with pytest.raises(ExperimentError, match=r"^mutations\.act: PB2 explores continuous ranges "
                           r"only, but got .*; write a range such as"):
            pb2_bounds(check_mutations(bad))


@pytest.mark.parametrize("extra, words", [
    ({"burn_in_period": 3}, "burn_in_period: Ray's PB2 has no burn-in period"),
    ({"perturbation_factors": (1.1, 0.9)}, "perturbation_factors: PB2 picks new values"),
])
def test_pb2_refuses_what_it_cannot_honour(extra, words):
    with pytest.raises(ExperimentError, match="^" + words):
        pbtflow.Experiment(trainable="lr-schedule", scheduler="pb2", **extra)


def test_pb2_is_one_class_that_unpickles_by_its_name(tmp_path):
    """RecordingPB2 is defined on first use (PB2 imports scikit-learn); each
    PB2 experiment gets that one class, and Tune's pickle of the scheduler
    refers to it by name, so a resume in a new process gets it back."""
    from ray import cloudpickle

    from pbtflow import pbt

    experiment = pbtflow.Experiment(trainable="lr-schedule", scheduler="pb2")
    mutations = {"lr": {"uniform": [1e-4, 0.02]}}
    first, second = (pbt.build_scheduler(experiment, "mean_accuracy", mutations) for _ in range(2))
    assert type(first) is type(second) is pbt.RecordingPB2
    path = tmp_path / "scheduler.pkl"
    path.write_bytes(cloudpickle.dumps(first))
    code = ("import pickle; from pbtflow import pbt; "
            f"scheduler = pickle.loads(open({str(path)!r}, 'rb').read()); "
            "assert type(scheduler) is pbt.RecordingPB2, type(scheduler)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_pb2_on_a_real_run_keeps_the_same_record(ray_runtime, workdir):
    """PB2 (Ray's Population Based Bandits) on the lr-schedule toy: its exploits
    are in Ray's log like PBT's, every new lr lies inside the mutation's range,
    and the MLflow record agrees with Ray's log (Ray's own MLflow callback cannot
    log PB2 at all)."""
    results = pbtflow.tune(pbtflow.Experiment(trainable="lr-schedule", scheduler="pb2", population=3,
                                              stop_iters=40, perturbation_interval=5, seed=1,
                                              experiment_name="pb2"))
    assert results.num_errors == 0
    log = _ray_log(results)
    assert log, "PB2 exploited"
    assert all(1e-4 <= new["lr"] <= 0.02 for *_, new in log), [new["lr"] for *_, new in log]
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    parents, _ = runs_by_role(client, "pb2")
    assert parents[0].data.params["scheduler"] == "pb2"
    assert assert_record_is_true(client, parents[0].info.run_id, results)["exploits"] == len(log)
