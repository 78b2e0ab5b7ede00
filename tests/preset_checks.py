"""Checks every RLlib preset's tests share: a member's config as RLlib itself
validates it, and the configs PBT's explore makes from a preset's mutations."""

import random

from pbtflow.pbt import bounds_of, flatten_keys, make_explore


def rllib_config(config_cls, param_space: dict, point: dict):
    """What Tune hands RLlib for one member, validated by RLlib itself."""
    config = config_cls.from_dict({**param_space, **point})
    config.validate()
    return config


def explored_configs(mutations: dict, repair, start: dict, trials: int):
    """Configs PBT's explore (with ``repair``) makes from ``start`` with every
    mutation drawn at random, the first ones at every bound and far outside
    it; each is checked to lie inside the mutations' bounds."""
    explore = make_explore(mutations, repair)
    rng = random.Random(1)
    corners = []
    for key in flatten_keys(mutations):
        low, high, _ = bounds_of(mutations[key])
        corners += [{key: low}, {key: high}, {key: low - 10 * (high - low + 1)}, {key: high * 100}]
    for trial in range(trials):
        config = dict(start)
        for key in flatten_keys(mutations):
            m = mutations[key]
            config[key] = rng.choice(m) if isinstance(m, list) else m.sample(random_state=rng.randint(0, 10**6))
        if trial < len(corners):
            config.update(corners[trial])
        fixed = explore(config)
        for key in flatten_keys(mutations):
            low, high, _ = bounds_of(mutations[key])
            assert low <= fixed[key] <= high, (key, fixed[key])
        yield fixed
