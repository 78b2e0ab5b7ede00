"""The RLlib Algorithm pbtflow's PPO members run: RLlib's PPO whose actor Tune
reuses across PBT exploits and pauses, and the callback that reports the
values the learner really trains with.

RLlib offers no public way to change a built Algorithm's hyperparameters, so
the reset reaches into RLlib's learner, connector and env-runner attributes,
through ``pbtflow.ray_internals``."""

from __future__ import annotations

from ray.rllib.algorithms.ppo import PPO
from ray.rllib.connectors.learner import GeneralAdvantageEstimation
from ray.rllib.utils.metrics.metrics_logger import MetricsLogger

from pbtflow import ray_internals
from pbtflow.trainables.rllib_algorithm import EpisodeStats, MemberSeed, member_seed

# Config keys that RLlib's PPO reads when it samples or learns, never when it
# builds, so that a new value applies to a live Algorithm (the learner's and
# env runners' config is swapped, and the schedulers and the GAE connector
# built from it are renewed). A member whose varying keys are all here reuses
# its actor; any other varying key (env, model, resources) needs a new one.
IN_PLACE = frozenset({
    "lr", "gamma", "lambda", "clip_param", "vf_clip_param", "entropy_coeff",
    "vf_loss_coeff", "kl_coeff", "kl_target", "use_kl_loss", "grad_clip", "grad_clip_by",
    "num_epochs", "minibatch_size", "train_batch_size_per_learner", "shuffle_batch_per_epoch",
    "_train_batch_size_per_learner",  # what to_dict() calls the batch
})


class PBTPPO(MemberSeed, PPO):
    """RLlib's PPO with ``reset_config``: Tune hands a live actor a new member
    (or the same member after an exploit or a pause) instead of starting a new
    process and rebuilding env runners, learner and torch. After the reset the
    Algorithm is as freshly built with the new config (weights, optimizer,
    observation filter and metrics as after ``setup``); Tune then restores the
    member's checkpoint into it, if the member has one."""

    def setup(self, config):
        super().setup(config)
        self._built_config = self.config  # Tune's reset replaces self.config with a dict
        self._fresh_state = self.get_state()

    def reset_config(self, new_config: dict) -> bool:
        config = self.get_default_config().update_from_dict(new_config)
        # The seed this actor was built with (MemberSeed), unless the new member's differs.
        config.seed = member_seed(config.seed, self._member)
        config.validate()
        old, new = self._built_config.to_dict(), config.to_dict()
        changed = {k for k in old.keys() | new.keys() if old.get(k) != new.get(k)}
        if changed - IN_PLACE:
            return False  # the spec turns reuse off for such members (rllib.spec)
        config.freeze()
        self.config = self._built_config = config
        self.callbacks = [cls() for cls in _as_list(config.callbacks_class)]
        self.metrics = MetricsLogger(root=True, stats_cls_lookup=config.stats_cls_lookup)
        self.learner_group.foreach_learner(lambda learner: _reset_learner(learner, config))
        self.env_runner_group.foreach_env_runner(
            lambda env_runner: _reset_env_runner(env_runner, config), local_env_runner=True)
        self.set_state(self._fresh_state)
        return True

    def load_checkpoint(self, checkpoint_dir: str) -> None:
        super().load_checkpoint(checkpoint_dir)
        # The optimizer's state carries the donor's learning rate; the member
        # trains with its own from the first update on.
        self.learner_group.foreach_learner(ray_internals.apply_lr)


def _as_list(value) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _reset_learner(learner, config) -> None:
    learner.config = config = config.copy(copy_frozen=False)  # restoring writes to it
    ray_internals.forget_weights_version(learner)  # else a restored, older checkpoint's are ignored
    learner.entropy_coeff_schedulers_per_module.clear()  # rebuilt from config on use
    learner.curr_kl_coeffs_per_module.clear()  # not checkpointed: starts from config
    for piece in ray_internals.learner_connectors(learner):
        if isinstance(piece, GeneralAdvantageEstimation):
            piece.gamma, piece.lambda_ = config.gamma, config.lambda_
    ray_internals.renew_lr_schedules(learner, config)


def _reset_env_runner(env_runner, config) -> None:
    env_runner.config = config
    ray_internals.forget_weights_version(env_runner)  # take whatever weights come next
    ray_internals.restart_episodes(env_runner)  # no episode continues across members
    env_runner.metrics = MetricsLogger(stats_cls_lookup=config.stats_cls_lookup, root=False)


class EffectiveValues(EpisodeStats):
    """Reports the values the learner really trains with, so that tracking
    can check them against what PBT set (a restored checkpoint has been known
    to override perturbed values: ray issues 62173, 35640)."""

    def on_train_result(self, *, algorithm, metrics_logger=None, result, **kwargs):
        super().on_train_result(algorithm=algorithm, metrics_logger=metrics_logger, result=result)
        learner = ray_internals.local_learner(algorithm)
        config = learner.config if learner is not None else algorithm.config
        module = config.get_config_for_module("default_policy")
        effective = {
            "gamma": config.gamma,
            "clip_param": module.clip_param,
            "lambda": module.lambda_,
            "entropy_coeff": module.entropy_coeff,
            "vf_loss_coeff": module.vf_loss_coeff,
            "num_epochs": algorithm.config.num_epochs,
            "minibatch_size": algorithm.config.minibatch_size,
            "train_batch_size_per_learner": algorithm.config.train_batch_size_per_learner,
        }
        if learner is not None:  # what the GAE connector and the optimizer use
            gae = [p for p in ray_internals.learner_connectors(learner)
                   if isinstance(p, GeneralAdvantageEstimation)]
            if gae:
                effective["gamma"], effective["lambda"] = gae[0].gamma, gae[0].lambda_
        lr = result.get("learners", {}).get("default_policy", {}).get(
            "default_optimizer_learning_rate")  # read from the optimizer itself
        if lr is not None:
            effective["lr"] = lr
        result["effective"] = effective
