"""Every use of Ray's private state, in one place.

Ray Tune and RLlib have no public API for what pbtflow needs here, so these
functions read or write private attributes. They are tested with the Ray
minor release ``pyproject.toml`` pins (``TESTED_RAY``); after an upgrade, this
module is the one to check. The other private uses are overrides of Ray's
private methods and attributes in subclasses, listed here so that they are
checked at the same time:

- ``pbt.Recording`` (subclasses ``PopulationBasedTraining`` and ``PB2``):
  overrides ``_exploit``; reads ``_hyperparam_mutations``, ``_metric``,
  ``_time_attr``, ``_synch``, ``_perturbation_interval``, and reads and sets
  ``_next_perturbation_sync``.
- ``pbt.ScheduleReplay`` (subclasses ``PopulationBasedTrainingReplay``):
  overrides ``_load_policy``.
- ``retention``: resolves the ``_FutureTrainingResult`` PBT keeps for a save
  in flight, as PBT itself does before an exploit.
- ``stopping.InterruptWatch``: matches Tune's log text "has been interrupted".
- ``policy_model`` (which cannot import pbtflow): freezes a served
  MeanStdFilter (``_update_stats``).
- ``trainables.ppo_algorithm``: on an in-place reset, besides the functions
  below, clears the PPO learner's ``entropy_coeff_schedulers_per_module`` and
  ``curr_kl_coeffs_per_module`` and gives env runners a new ``metrics``
  logger (attributes without an underscore, but no API either).

``tests/test_ray_internals.py`` is the canary: it builds the real objects and
fails naming the attribute that moved.
"""

from __future__ import annotations

import logging
from typing import Any, Iterable

import ray

log = logging.getLogger(__name__)

TESTED_RAY = "2.60"  # the minor release pyproject.toml pins and CI tests


def check_version() -> None:
    """Warn once if Ray is not the release these functions were tested with."""
    if not ray.__version__.startswith(TESTED_RAY + "."):
        log.warning("pbtflow: tested with Ray %s.x, but Ray %s is installed; pbtflow uses some of "
                    "Ray's private state (see pbtflow/ray_internals.py).", TESTED_RAY, ray.__version__)


def pbt_trial_states(scheduler: Any) -> dict[Any, Any]:
    """PBT's per-trial state (last result, last score, last checkpoint), by trial."""
    return getattr(scheduler, "_trial_state", None) or {}


def checkpoint_results(trial: Any) -> list[Any]:
    """A trial's registered checkpoints, oldest first (Tune's checkpoint manager)."""
    return trial.run_metadata.checkpoint_manager._checkpoint_results


def set_checkpoint_results(trial: Any, results: Iterable[Any]) -> None:
    """Forget checkpoints the retention deleted, so that Tune never restores one."""
    trial.run_metadata.checkpoint_manager._checkpoint_results = list(results)


def tune_trial_id(config: Any) -> str | None:
    """The id of the Tune trial a trainable's config dict was made for: Tune
    adds its trial info under ``ray.tune.result.TRIAL_INFO``, which an RLlib
    Algorithm drops when it turns the dict into its config (so its
    ``trial_id`` reads "default")."""
    from ray.tune.result import TRIAL_INFO

    info = config.get(TRIAL_INFO) if isinstance(config, dict) else None
    return getattr(info, "trial_id", None)


def live_trials(generator: Any) -> set[Any]:
    """The trials a ``BasicVariantGenerator`` still waits for."""
    return generator._live_trials


def run_config(tuner: Any) -> Any:
    """The ``RunConfig`` a (possibly restored) ``Tuner`` runs with, its
    callbacks and stopper included."""
    return tuner._local_tuner.get_run_config()


def trial_statuses(results: Any) -> dict[str, str]:
    """Trial id -> Tune's status (TERMINATED, ERROR, PAUSED, ...) after ``fit``."""
    return {t.trial_id: t.status for t in results._experiment_analysis.trials}


def learner_connectors(learner: Any) -> list[Any]:
    """The pieces of an RLlib learner's connector pipeline."""
    return learner._learner_connector.connectors


# RLlib's new API stack has no public way to change a built learner's
# hyperparameters or to take weights older than those it has seen: PPO's
# actor reuse (trainables.ppo_algorithm) and the learning rates after a
# restore (trainables.rllib_algorithm) set these.

def local_learner(algorithm: Any) -> Any:
    """The learner in the algorithm's own process (None with remote learners)."""
    return getattr(algorithm.learner_group, "_learner", None)


def apply_lr(learner: Any) -> None:
    """Set every optimizer's learning rate from the learner's schedules (a
    restored optimizer state carries the donor's)."""
    for optimizer, schedule in learner._optimizer_lr_schedules.items():
        learner._set_optimizer_lr(optimizer, lr=schedule.get_current_value())


def renew_lr_schedules(learner: Any, config: Any) -> None:
    """Rebuild the learner's learning-rate schedules from ``config`` and apply them."""
    from ray.rllib.utils.schedules.scheduler import Scheduler

    for module_id, optimizer_names in learner._module_optimizers.items():
        lr = config.get_config_for_module(module_id).lr
        for name in optimizer_names:
            optimizer = learner._named_optimizers[name]
            if optimizer in learner._optimizer_lr_schedules:
                learner._optimizer_lr_schedules[optimizer] = Scheduler(
                    fixed_value_or_schedule=lr, framework=learner.framework, device=learner._device)
    apply_lr(learner)


def forget_weights_version(learner_or_env_runner: Any) -> None:
    """Take the next weights sent, even a restored checkpoint's older ones."""
    learner_or_env_runner._weights_seq_no = 0


def freeze_observation_filters(env_runner: Any) -> None:
    """Stop the env runner's MeanStdFilters from moving their statistics (an
    evaluation plays the policy as it is served: policy_model freezes them too)."""
    from ray.rllib.connectors.env_to_module.mean_std_filter import MeanStdFilter

    for piece in env_runner._env_to_module.connectors:
        if isinstance(piece, MeanStdFilter):
            piece._update_stats = False


def restart_episodes(env_runner: Any) -> None:
    """Reset the env runner's environments at its next sample (no episode
    continues across members)."""
    env_runner._needs_initial_reset = True
