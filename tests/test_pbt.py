"""The mutation grammar and the explore function that repairs mutated PPO settings."""

import math

import pytest
from ray import tune

from pbtflow.experiment import ExperimentError
from pbtflow.pbt import bounds_of, check_mutations, flatten_keys, make_explore, to_mutation
from pbtflow.trainables.ppo import CLUSTER, LAPTOP, repair


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


@pytest.mark.parametrize("preset", [LAPTOP, CLUSTER])
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
