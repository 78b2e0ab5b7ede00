"""What the RLlib Algorithms pbtflow's members run add to RLlib's: episode
statistics that never read NaN, the learning rates a restored checkpoint must
not override, a replay buffer that an exploit copies with the weights (SAC,
DQN), and callbacks that report the values the learner really trains with
(``result["effective"]``, checked against PBT's by the tracker).

RLlib offers no public way to reach its learner's optimizers, so this module
(like ``ppo_algorithm``) sets them through ``pbtflow.ray_internals``."""

from __future__ import annotations

import math
import pickle
from pathlib import Path

from ray.rllib.algorithms.dqn import DQN
from ray.rllib.algorithms.sac import SAC
from ray.rllib.callbacks.callbacks import RLlibCallback

from pbtflow import ray_internals

EPISODE_STATS = ("episode_return_mean", "episode_return_max", "episode_return_min", "episode_len_mean")
REPLAY_BUFFER_FILE = "pbtflow_replay_buffer.pkl"
REPLAY_TIMESTEPS = "replay_buffer_timesteps"  # reported: what the member learns from


def episode_stats(callback, result: dict) -> None:
    """RLlib 2.60 reports the episode return as NaN in an iteration that ended
    no episode (vectorised envs of fixed length end theirs together, so most
    iterations do). The return over the recent episodes has not changed, so
    repeat the last one this member reported; a member with nothing to repeat
    (just restored) leaves it out, as before its first episode. NaN would make
    PBT's ranking arbitrary and the best member a matter of luck."""
    runners = result.get("env_runners") or {}
    value = runners.get("episode_return_mean")
    if value is None:
        return
    if math.isnan(value):
        for key in EPISODE_STATS:
            runners.pop(key, None)
        runners.update(getattr(callback, "last_episode_stats", {}))
    else:
        callback.last_episode_stats = {k: runners[k] for k in EPISODE_STATS if k in runners}


class EpisodeStats(RLlibCallback):
    """Episode statistics without NaN (see :func:`episode_stats`)."""

    def on_train_result(self, *, algorithm, metrics_logger=None, result, **kwargs):
        episode_stats(self, result)


SEED_STRIDE = 1000  # RLlib seeds env runner i of a member with its seed + i


def member_seed(seed: int | None, trial_id: str) -> int | None:
    """A member's own seed: the experiment's plus a stride per member index
    (the end of Tune's trial id, ``<run>_00003``), so that no two members
    play the same episodes or draw the same initial weights; no seed stays
    none, and outside Tune (no index) the seed is the experiment's."""
    index = str(trial_id).rsplit("_", 1)[-1]
    return seed + SEED_STRIDE * int(index) if seed is not None and index.isdigit() else seed


class MemberSeed:
    """Mixed into an RLlib Algorithm: it builds with its member's own seed
    (:func:`member_seed`). The seed only matters when the Algorithm is
    built: a member that takes over a live actor (PPO's ``reset_config``)
    keeps the seed and random state the actor has."""

    def __init__(self, config=None, *args, **kwargs) -> None:
        self._member = ray_internals.tune_trial_id(config) or "default"
        super().__init__(config, *args, **kwargs)

    def setup(self, config) -> None:
        seed = member_seed(self.config.seed, self._member)
        if seed != self.config.seed:
            self.config = self.config.copy(copy_frozen=False)  # RLlib builds from self.config
            self.config.seed = seed
            self.config.freeze()
        super().setup(config)


class ReplayInCheckpoint:
    """Mixed into an off-policy RLlib Algorithm: its checkpoint holds the replay
    buffer too (RLlib's new API stack leaves it out), so that a member that
    exploits learns from the donor's experience as well as its weights instead
    of an empty buffer; and after a restore the optimizers take the member's
    own learning rates from the first update on."""

    def save_checkpoint(self, checkpoint_dir: str) -> None:
        super().save_checkpoint(checkpoint_dir)
        if self.local_replay_buffer is not None:
            with open(Path(checkpoint_dir) / REPLAY_BUFFER_FILE, "wb") as file:
                pickle.dump(self.local_replay_buffer.get_state(), file, protocol=pickle.HIGHEST_PROTOCOL)

    def load_checkpoint(self, checkpoint_dir: str) -> None:
        super().load_checkpoint(checkpoint_dir)
        saved = Path(checkpoint_dir) / REPLAY_BUFFER_FILE
        if self.local_replay_buffer is not None and saved.is_file():
            with open(saved, "rb") as file:
                self.local_replay_buffer.set_state(pickle.load(file))
        self.learner_group.foreach_learner(ray_internals.apply_lr)


class PBTSAC(MemberSeed, ReplayInCheckpoint, SAC):
    """RLlib's SAC whose checkpoints carry the replay buffer."""


class PBTDQN(MemberSeed, ReplayInCheckpoint, DQN):
    """RLlib's DQN whose checkpoints carry the replay buffer."""


class OffPolicyValues(EpisodeStats):
    """The values an off-policy learner really trains with: gamma, tau, the
    batch and n-step from the learner's own config, each learning rate read
    from its optimizer (RLlib reports it per optimizer); and the replay
    buffer's size."""

    LEARNING_RATES: dict[str, str] = {}  # hyperparameter -> RLlib's reported learning-rate key
    CONFIG_KEYS = ("gamma", "tau", "train_batch_size_per_learner", "n_step",
                   "target_network_update_freq")

    def on_train_result(self, *, algorithm, metrics_logger=None, result, **kwargs):
        super().on_train_result(algorithm=algorithm, metrics_logger=metrics_logger, result=result)
        learner = ray_internals.local_learner(algorithm)
        config = learner.config if learner is not None else algorithm.config
        effective = {}
        for key in self.CONFIG_KEYS:
            value = getattr(config, key, None)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                effective[key] = value
        reported = result.get("learners", {}).get("default_policy", {})
        for key, name in self.LEARNING_RATES.items():
            if reported.get(name) is not None:
                effective[key] = reported[name]
        result["effective"] = effective
        if algorithm.local_replay_buffer is not None:
            result[REPLAY_TIMESTEPS] = algorithm.local_replay_buffer.get_num_timesteps()


class SACValues(OffPolicyValues):
    LEARNING_RATES = {"actor_lr": "policy_learning_rate", "critic_lr": "qf_learning_rate",
                      "alpha_lr": "alpha_learning_rate"}


class DQNValues(OffPolicyValues):
    LEARNING_RATES = {"lr": "default_optimizer_learning_rate"}
