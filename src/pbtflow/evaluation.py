"""The tuned agent judged fairly. Under PBT the member with the highest last
training return is the maximum over a population of noisy returns, measured
with exploration on: after tuning, the top members by that return each play
fresh episodes with the greedy policy, on environment seeds no member trained
on, and the best by that evaluation becomes the experiment's best. Each member
plays in its own Ray task on the cluster, with the CPUs of a trial's own
process (it samples there, without env runners)."""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Any, Sequence

import ray
from ray.exceptions import GetTimeoutError

from pbtflow import names, ray_internals

log = logging.getLogger(__name__)

# Evaluation seeds: the experiment's seed (0 when unset) plus this offset, the
# same for every evaluated member so that they play the same episodes.
SEED_OFFSET = 1_000_003
TIMEOUT = 1800.0  # seconds for the whole evaluation; a member still playing then is left out


@dataclass
class Evaluation:
    trial_id: str
    returns: list[float]
    training_value: float  # the member's last training return, which ranked it for evaluation
    checkpoint: str = ""  # the evaluated checkpoint (the member's last)

    @property
    def mean(self) -> float:
        return sum(self.returns) / len(self.returns)

    @property
    def std(self) -> float:  # population standard deviation of the episode returns
        return math.sqrt(sum((r - self.mean) ** 2 for r in self.returns) / len(self.returns))

    def metrics(self) -> dict[str, float]:
        return {names.EVAL_RETURN_MEAN: self.mean, names.EVAL_RETURN_STD: self.std,
                names.EVAL_EPISODES: float(len(self.returns))}


def evaluation_seed(experiment_seed: int | None) -> int:
    return (experiment_seed or 0) + SEED_OFFSET


def evaluate(candidates: Sequence[tuple[str, float, Any]], trainable: type, episodes: int,
             seed: int, cpus: float, timeout: float = TIMEOUT) -> list[Evaluation]:
    """Play ``episodes`` greedy episodes with each candidate (trial id,
    training value, Tune result with its config and last checkpoint), all at
    once as Ray tasks; best evaluation first (ties in training order). A
    member whose task fails or outlasts ``timeout`` seconds is left out, with
    a warning."""
    play = ray.remote(_play).options(num_cpus=cpus)
    pending = [(trial_id, value, result.checkpoint.path,
                play.remote(trainable, result.config, result.checkpoint.path, episodes, seed))
               for trial_id, value, result in candidates]
    deadline = time.monotonic() + timeout
    evaluations = []
    for trial_id, value, checkpoint, ref in pending:
        try:
            returns = ray.get(ref, timeout=max(1.0, deadline - time.monotonic()))
        except GetTimeoutError:
            ray.cancel(ref, force=True)
            log.warning("pbtflow: the evaluation of %s took longer than %d s; it is left out.",
                        trial_id, timeout)
            continue
        except Exception as exc:
            log.warning("pbtflow: the evaluation of %s failed (%s); it is left out.", trial_id,
                        str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__)
            continue
        evaluations.append(Evaluation(trial_id, returns, value, checkpoint))
    return sorted(evaluations, key=lambda e: -e.mean)


def _play(trainable: type, config: dict, checkpoint: str, episodes: int, seed: int) -> list[float]:
    """Restore the member into a fresh Algorithm sampling in its own process
    from one environment (with several, the episodes that end first, the short
    ones, would be over-represented), and return the returns of ``episodes``
    episodes played without exploration."""
    config = {**config, "num_env_runners": 0, "num_envs_per_env_runner": 1,
              "num_gpus_per_learner": 0, "seed": seed}
    algorithm = trainable(config=config)
    try:
        algorithm.restore(checkpoint)
        # The member's observation statistics as they are served (frozen): a
        # filter that kept learning over these episodes would be judged on
        # statistics the served policy does not have.
        ray_internals.freeze_observation_filters(algorithm.env_runner)
        returns: list[float] = []
        while len(returns) < episodes:
            done = algorithm.env_runner.sample(num_episodes=episodes - len(returns), explore=False)
            returns += [float(e.get_return()) for e in done if e.is_done]
        return returns[:episodes]
    finally:
        algorithm.stop()
