"""The experiment description: one validated dataclass, loaded from a YAML file
and CLI flags (flags override the file). Every bad input fails here, before Ray
or MLflow is touched, with one sentence that names the input and the fix."""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

from pbtflow.names import RETURN_MEAN

PRESETS = ("auto", "discrete", "continuous", "cluster")
BASELINES = ("grid", "random")
SCHEDULERS = ("pbt", "pb2")
PERTURBATION_FACTORS = (1.2, 0.8)  # Ray's default
_TRAINABLE_PATH = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
_RUN_NAME = re.compile(r"^[\w.\-]+$")


class ExperimentError(ValueError):
    """pbtflow cannot run the experiment as asked; the message is one sentence
    that names the input and the fix. Raised as one of its kinds below; the
    command exits with the kind's ``exit_code``."""

    exit_code = 2


class SettingError(ExperimentError):
    """A setting (flag, YAML key, Experiment field, trainable path) is invalid,
    or the trainable does not do what its settings say (never reports the
    metric, raises before its first result)."""

    exit_code = 2


class TrackingError(ExperimentError):
    """MLflow: the tracking server is unreachable or refuses, or a record is missing."""

    exit_code = 3


class ClusterError(ExperimentError):
    """Ray: the cluster cannot host the experiment (too few CPUs, GPUs or nodes)."""

    exit_code = 4


class AzureMLError(ExperimentError):
    """Azure ML: the SDK is missing, or no credential signs in."""

    exit_code = 5


def _opt(default: Any, help: str, **extra: Any) -> Any:
    """A setting: its default, its help text, and metadata: ``only`` (the one
    trainable it applies to), ``cli=False`` (YAML/Python only), ``invalid``
    (values that break its rule, beyond its type: the bad-input tests walk them)."""
    return field(default=default, metadata={"help": help, **extra})


@dataclass
class Experiment:
    """What to tune and how. Field names are also the YAML keys, the CLI flags
    (``--stop-iters``) and the Azure ML job inputs."""

    trainable: str = _opt("ppo", "What to tune: 'ppo', 'sac' or 'dqn' (RLlib, with presets), "
                          "another online RLlib algorithm by name ('appo', 'impala', "
                          "'dreamerv3'; its initial: and mutations: from YAML), the toys "
                          "'lr-schedule' and 'quadratic', or your own trainable: a function as "
                          "'package.module:function' or a tune.Trainable subclass as "
                          "'package.module:Class'.",
        invalid=("not a path", "no_such_module:train"))
    env: str | None = _opt(None, "Registered gymnasium environment id (RLlib trainables only).",
                           only="rllib", shown_default="CartPole-v1; sac: Pendulum-v1",
        invalid=("CartPole-v9",))
    population: int | None = _opt(None, "Number of PBT members (trials) trained together.",
        invalid=("1",))
    stop_iters: int | None = _opt(None, "Stop each member after this many training iterations.",
        invalid=("0",))
    stop_return: float | None = _opt(None, "Stop the whole population once the best member's "
                                     "metric reaches this value (for RLlib, its mean return over the "
                                     "episodes that ended in the member's latest iteration, which "
                                     "a small batch keeps few: see --stop-episodes; PPO's preset: 450; "
                                     "'inf' never stops early).")
    stop_episodes: int = _opt(1, "With --stop-return on an RLlib member's mean return: compare "
                              "instead its mean over its latest iterations that together ended at "
                              "least this many episodes (each iteration weighted by the episodes "
                              "its mean takes; "
                              "a member that exploits takes over its donor's); gymnasium calls an "
                              "environment solved at a mean over 100 episodes. Default 1: the "
                              "latest iteration's episodes.", only="rllib",
        invalid=("0",))
    metric: str | None = _opt(None, "Metric PBT ranks members by; default: the trainable's own.",
        invalid=("",))
    mode: str = _opt("max", "Whether the metric is maximised ('max') or minimised ('min').",
        invalid=("maximum", "min"))
    time_attr: str | None = _opt(None, "Result field PBT measures time in "
                                 "(e.g. training_iteration or time_total_s).",
        invalid=("",))
    perturbation_interval: float | None = _opt(None, "Exploit/explore every this many time_attr units.",
        invalid=("0", "-3"))
    quantile_fraction: float | None = _opt(None, "Share of the population that copies the best / "
                                           "is copied from, in [0, 0.5].",
        invalid=("0.7", "-0.1"))
    resample_probability: float | None = _opt(None, "Chance that explore resamples a hyperparameter "
                                              "instead of perturbing it, in [0, 1].",
        invalid=("2",))
    synch: bool | None = _opt(None, "Synchronous PBT: wait for every member before exploiting.")
    scheduler: str = _opt("pbt", "'pbt' (Ray's PopulationBasedTraining) or 'pb2' (Population Based "
                          "Bandits: a Gaussian-process bandit picks new values inside the mutations' "
                          "ranges; for small populations and continuous hyperparameters).",
        invalid=("pb3", "PBT"))
    burn_in_period: float = _opt(0.0, "No member is ranked, copied or copied from before this many "
                                 "time_attr units (PPO's first iterations are too noisy to rank).",
        invalid=("-1", "100"))
    perturbation_factors: tuple = _opt(PERTURBATION_FACTORS, "The two factors PBT multiplies a continuous "
                                       "value by when it perturbs it instead of resampling, one "
                                       "above 1 and one below (e.g. 1.1 0.9 for gentler steps).",
                                       shown_default="1.2 0.8", metavar="FACTOR",
        invalid=("1.2", "1.2,1.1", "0,0.8", "1.2,0.8,0.9", "big,small"))
    explore: str | None = _opt(None, "Your own explore function as 'package.module:function': it "
                               "takes the config PBT perturbed and pbtflow clipped to the mutation "
                               "bounds, returns it changed (mutated keys only), and runs before the "
                               "trainable's own repair.", shown_default="none",
        invalid=("not a path", "no_such_module:explore"))
    preset: str = _opt("auto", "The RLlib trainable's search-space preset: 'discrete' or "
                       "'continuous' (sized for 2 CPU cores; the first members start from "
                       "known-good settings: for PPO RLlib's tuned CartPole and rl-zoo's "
                       "LunarLander, or RLlib's tuned Pendulum), PPO's 'cluster' (the search "
                       "space of Ray's pbt_ppo_example, large batches), or 'auto': by the "
                       "environment's action space (SAC has continuous only, DQN discrete only).",
                       only="rllib", invalid=("tiny", "laptop"))
    cpus_per_trial_process: float | None = _opt(None, "CPUs reserved for a trial's own process "
                                                "(PPO: learner + local sampling); default: 1, and for PPO "
                                                "this machine's cores / population (at most 1) so the "
                                                "whole population trains at once (1 on the cluster preset).",
        invalid=("0",))
    num_env_runners: int = _opt(0, "RLlib env runners per trial (0 samples in the trial's own "
                                "process).", only="rllib",
        invalid=("-1", "64"))
    cpus_per_env_runner: float = _opt(1, "CPUs per RLlib env runner.", only="rllib",
        invalid=("0",))
    num_envs_per_env_runner: int | None = _opt(None, "Vectorised envs each env runner (or the "
                                               "trial's own process) steps at once; default: the "
                                               "preset's (discrete 8, continuous 20, cluster 1).",
                                               only="rllib", invalid=("0",))
    gpus_per_trial: float = _opt(0, "GPUs per trial (for the RLlib learner).", only="rllib",
        invalid=("-1",))
    eval_top: int | None = _opt(None, "After tuning, the top members by training return each play "
                                "greedy episodes on environment seeds no member trained on, and the "
                                "best by that evaluation becomes the experiment's best (RLlib "
                                "trainables; default 3, 0 turns it off).", only="rllib",
        invalid=("-1",))
    eval_episodes: int | None = _opt(None, "Episodes each evaluated member plays (default 20; "
                                     "--smoke: 3).", only="rllib", invalid=("0",))
    register_model: str | None = _opt(None, "Also register the best member's policy (logged on the "
                                      "parent run as the MLflow model 'policy') in MLflow's model "
                                      "registry under this name, a new version each run.",
                                      only="rllib", invalid=("a/b", ""))
    checkpoint_interval: int | None = _opt(None, "Checkpoint every this many iterations; must divide "
                                           "the perturbation interval (default: equal to it).",
        invalid=("0", "3"))
    max_failures: int = _opt(2, "Times Tune retries a failed trial from its latest checkpoint.",
        invalid=("-2",))
    stall_timeout: float | None = _opt(None, "End the experiment as interrupted (state saved, runs "
                                       "KILLED, the resume hint printed) when no member has reported "
                                       "for this many seconds; without it a stall is only reported.",
                                       shown_default="none: report a stall, keep waiting",
                                       invalid=("0", "-5"))
    experiment_name: str = _opt("pbt", "MLflow experiment (and Ray Tune experiment folder) name.",
        invalid=("  ",))
    run_name: str | None = _opt(None, "Name of the MLflow parent run and of Ray's experiment folder, "
                                "a date-time appended; default: what is tuned, e.g. "
                                "ppo-CartPole-v1 (your trainable by its function or class name). "
                                "Inside an Azure ML job the job's run keeps its own name.",
                                shown_default="<trainable>-<env>",
        invalid=("a/b", ""))
    tracking_uri: str | None = _opt(None, "MLflow tracking URI; default: $MLFLOW_TRACKING_URI, else "
                                    "MLflow's embedded store (./mlflow.db).",
        invalid=("http://127.0.0.1:9",))
    upload_checkpoint: bool = _opt(True, "Upload the best member's last checkpoint to the parent "
                                   "run (best_checkpoint/); it holds the trainable's own pickled "
                                   "config, credentials included, so --no-upload-checkpoint keeps "
                                   "it out of MLflow.")
    storage_path: str | None = _opt(None, "Where Ray Tune writes checkpoints and results; default "
                                    "./pbtflow_results. Must be visible to every node on a cluster.",
        invalid=("/dev/null/results",))
    seed: int | None = _opt(None, "Random seed for the search space, PBT and the trainables (a PPO, "
                            "SAC or DQN member builds with this seed plus 1000 x its index).")
    baseline: str | None = _opt(None, "Run a no-PBT baseline instead, as its own parent run: 'grid' "
                                "(PBT's starting points, held fixed) or 'random' (starting values "
                                "sampled from the mutation domains); same trainable and budget.",
                                shown_default="none: run PBT",
        invalid=("best",))
    resume: str | None = _opt(None, "Folder of an interrupted experiment (printed when it stopped) to "
                              "continue, into the same MLflow parent and child runs.",
        invalid=("/tmp",))
    smoke: bool = _opt(False, "Shrink what you left unset to check the wiring in about a minute "
                       "(population 2, at most 6 iterations, perturbation every 2, small batches).")
    initial: dict | None = _opt(None, "Initial hyperparameters (YAML/Python only): values or Tune "
                                "domains, overriding the preset's.", cli=False,
        invalid=([1, 2], {"lr": 5.0}))
    mutations: dict | None = _opt(None, "PBT hyperparameter mutations (YAML/Python only), replacing "
                                  "the preset's: a list, a {uniform|loguniform|randint|choice: ...} "
                                  "mapping, a Tune domain, a callable or a nested dict.", cli=False,
        invalid=({"lr": 0.001}, {"lr": {"uniform": [1.0, 0.0]}}, {}))

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            setattr(self, f.name, _coerce(f, getattr(self, f.name)))
        # Settings left unset take the trainable's preset (trainables.DEFAULTS).
        from pbtflow.trainables import defaults_for, rllib_name

        if rllib_name(self.trainable):  # RLlib's names in any case: 'PPO' is 'ppo'
            self.trainable = self.trainable.lower()
        # --smoke shrinks only what the user left unset, then the preset fills
        # the rest: a value the user gave always wins.
        preset = defaults_for(self.trainable)
        shrunk = {"population": 2, "stop_iters": min(preset["stop_iters"], 6),
                  "perturbation_interval": 2} if self.smoke else {}
        if self.smoke and "eval_episodes" in preset:
            shrunk["eval_episodes"] = 3
        for key, value in {**preset, **shrunk}.items():
            if getattr(self, key) is None:
                setattr(self, key, value)
        if self.mode == "min" and self.metric is not None and self.metric == preset.get("metric"):
            raise SettingError(
                f"mode: {self.trainable}'s metric {self.metric!r} is maximised, but got mode='min'; "
                "drop --mode, or pass --metric with a metric your trainable minimises.")
        self._from_this_machine: set[str] = set()  # filled from this machine, not by the user
        if self.cpus_per_trial_process is None:
            self._from_this_machine.add("cpus_per_trial_process")
            # PPO on a laptop shares this machine's cores so that the whole
            # population trains at once. Any other trainable takes one CPU, as
            # in Tune: members take turns on a live worker (actor reuse), and
            # on Ray's pbt_function (8 members, 2 cores) that reached the first
            # done in 23-27 s against 47-68 s with a quarter CPU each
            # (benchmarks/bench_expert.py).
            cores = os.cpu_count() or 1
            shared = self.is_rllib and self.preset != "cluster"
            self.cpus_per_trial_process = (max(0.25, min(1.0, cores / max(1, self.population)))
                                           if shared else 1.0)
        self._validate()

    # -- validation -----------------------------------------------------------------
    def _validate(self) -> None:
        _check(self.population >= 2, "population",
               f"PBT needs at least 2 members, but got population={self.population}; "
               "use --population 2 or more")
        _check(self.stop_iters >= 1, "stop_iters",
               f"must be at least 1, but got stop_iters={self.stop_iters}")
        _check(self.stop_episodes >= 1, "stop_episodes",
               f"must be 1 or more, but got stop_episodes={self.stop_episodes}")
        _check(self.stop_episodes == 1 or (self.is_rllib and self.metric == RETURN_MEAN), "stop_episodes",
               f"averages an RLlib member's {RETURN_MEAN!r} over episodes, but got "
               f"stop_episodes={self.stop_episodes} with trainable={self.trainable!r} and "
               f"metric={self.metric!r}; leave it out")
        _check(self.stop_episodes == 1 or self.stop_return is not None, "stop_episodes",
               f"sets how --stop-return's mean is taken, but got stop_episodes={self.stop_episodes} "
               "without stop_return; pass --stop-return too, or leave it out")
        _check(self.mode in ("max", "min"), "mode", f"must be 'max' or 'min', but got mode={self.mode!r}")
        _check(self.metric is None or bool(self.metric.strip()), "metric",
               f"must name a result field the trainable reports, but got metric={self.metric!r}")
        _check(bool(self.time_attr), "time_attr", "must name a result field, e.g. training_iteration")
        _check(self.perturbation_interval > 0, "perturbation_interval",
               f"must be positive, but got perturbation_interval={self.perturbation_interval}")
        _check(0 <= self.quantile_fraction <= 0.5, "quantile_fraction",
               f"must lie in [0, 0.5], but got quantile_fraction={self.quantile_fraction}")
        _check(0 <= self.resample_probability <= 1, "resample_probability",
               f"must lie in [0, 1], but got resample_probability={self.resample_probability}")
        _check(self.preset in PRESETS, "preset",
               f"must be one of {', '.join(PRESETS)}, but got preset={self.preset!r}")
        _check(self.baseline in (None, *BASELINES), "baseline",
               f"must be one of {', '.join(BASELINES)}, but got baseline={self.baseline!r}; "
               "leave it out to run PBT")
        _check(self.num_envs_per_env_runner is None or self.num_envs_per_env_runner >= 1,
               "num_envs_per_env_runner", "must be 1 or more, but got num_envs_per_env_runner="
               f"{self.num_envs_per_env_runner}")
        _check(self.num_env_runners >= 0, "num_env_runners",
               f"must be 0 or more, but got num_env_runners={self.num_env_runners}")
        _check(self.cpus_per_trial_process > 0, "cpus_per_trial_process",
               f"must be positive, but got cpus_per_trial_process={self.cpus_per_trial_process}")
        _check(self.cpus_per_env_runner > 0, "cpus_per_env_runner",
               f"must be positive, but got cpus_per_env_runner={self.cpus_per_env_runner}")
        _check(self.gpus_per_trial >= 0, "gpus_per_trial",
               f"must be 0 or more, but got gpus_per_trial={self.gpus_per_trial}")
        _check(self.eval_top is None or self.eval_top >= 0, "eval_top",
               f"must be 0 (no evaluation) or more members, but got eval_top={self.eval_top}")
        _check(self.eval_episodes is None or self.eval_episodes >= 1, "eval_episodes",
               f"must be 1 or more, but got eval_episodes={self.eval_episodes}")
        _check(self.max_failures >= -1, "max_failures",
               f"must be -1 (retry forever) or more, but got max_failures={self.max_failures}")
        _check(bool(self.experiment_name.strip()), "experiment_name", "must not be empty")
        _check(self.run_name is None or bool(_RUN_NAME.match(self.run_name)), "run_name",
               f"must be letters, digits, '.', '_' or '-' (it names a folder), but got "
               f"run_name={self.run_name!r}")
        _check(self.register_model is None or bool(_RUN_NAME.match(self.register_model)),
               "register_model", f"must be letters, digits, '.', '_' or '-', but got "
               f"register_model={self.register_model!r}")
        _check(self.stall_timeout is None or self.stall_timeout > 0, "stall_timeout",
               f"must be a positive number of seconds, but got stall_timeout={self.stall_timeout}; "
               "leave it out to only report a stall")
        _check(self.burn_in_period >= 0, "burn_in_period",
               f"must be 0 or more {self.time_attr} units, but got burn_in_period={self.burn_in_period:g}")
        if self.time_attr == "training_iteration":
            _check(self.burn_in_period < self.stop_iters, "burn_in_period",
                   f"must end before the members stop (stop_iters={self.stop_iters}), but got "
                   f"burn_in_period={self.burn_in_period:g}, so PBT would never exploit; lower it")
        _check(self.scheduler in SCHEDULERS, "scheduler",
               f"must be one of {', '.join(SCHEDULERS)}, but got scheduler={self.scheduler!r}")
        if self.scheduler == "pb2":  # Ray's PB2 takes no burn-in, factors or resampling
            _check(self.burn_in_period == 0, "burn_in_period",
                   "Ray's PB2 has no burn-in period, but got burn_in_period="
                   f"{self.burn_in_period:g} with scheduler='pb2'; drop it or use --scheduler pbt")
            _check(tuple(self.perturbation_factors) == PERTURBATION_FACTORS, "perturbation_factors",
                   "PB2 picks new values with its bandit model, not by factors; drop "
                   "--perturbation-factors or use --scheduler pbt")
        low, high = sorted(self.perturbation_factors)
        _check(low > 0 and low < 1 < high, "perturbation_factors",
               "must be two positive factors, one above 1 and one below (e.g. 1.2 0.8), but got "
               + " ".join(f"{v:g}" for v in self.perturbation_factors))
        if self.explore is not None:
            _check(bool(_TRAINABLE_PATH.match(self.explore)), "explore",
                   f"must be 'package.module:function', but got explore={self.explore!r}")
        if self.checkpoint_interval is not None:
            _check(self.checkpoint_interval >= 1, "checkpoint_interval",
                   f"must be at least 1, but got checkpoint_interval={self.checkpoint_interval}")
            if self.time_attr == "training_iteration":
                _check(self.perturbation_interval % self.checkpoint_interval == 0,
                       "checkpoint_interval",
                       f"must divide perturbation_interval={self.perturbation_interval:g} so that PBT "
                       f"never copies a stale checkpoint, but got checkpoint_interval="
                       f"{self.checkpoint_interval}; use a divisor such as {self.perturbation_interval:g}")
        if self.trainable not in trainable_names():
            _check(bool(_TRAINABLE_PATH.match(self.trainable)), "trainable",
                   f"must be one of {', '.join(trainable_names())} or 'package.module:function' "
                   "(or 'package.module:Class'), "
                   f"but got trainable={self.trainable!r}")
        if self.is_rllib:
            _check_env(self.env)
            _check_preset(self)
        for key in ("initial", "mutations"):
            value = getattr(self, key)
            _check(value is None or isinstance(value, Mapping), key,
                   f"must be a mapping of hyperparameter names, but got {type(value).__name__}")
        if self.mutations is not None:
            from pbtflow.pbt import check_mutations  # one home for the mutation grammar

            check_mutations(self.mutations)

    # -- derived values, computed in one place ---------------------------------------
    @property
    def perturbation_checkpoint_interval(self) -> int:
        """Checkpoint frequency in iterations; it always divides the perturbation interval."""
        if self.checkpoint_interval is not None:
            return self.checkpoint_interval
        if self.time_attr == "training_iteration":
            return max(1, int(self.perturbation_interval))
        return 1

    @property
    def cpus_per_trial(self) -> float:
        """CPUs one trial needs: the trainable's own process plus its env runners."""
        if self.is_rllib:
            return self.cpus_per_trial_process + self.num_env_runners * self.cpus_per_env_runner
        return self.cpus_per_trial_process

    def to_dict(self, portable: bool = False) -> dict[str, Any]:
        """Every setting; ``portable``: without the values derived from this
        machine (its core count), so that another machine derives its own."""
        drop = getattr(self, "_from_this_machine", set()) if portable else set()
        return {f.name: None if f.name in drop else getattr(self, f.name) for f in dataclasses.fields(self)}

    def applicable_settings(self) -> dict[str, Any]:
        """The settings that describe this experiment: set, and meaningful for
        its trainable (no env for a function trainable); the search space
        (initial, mutations) is recorded per trial instead."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if getattr(self, f.name) is not None and f.name not in ("initial", "mutations")
                and f.metadata.get("only") in (None, "rllib" if self.is_rllib else self.trainable)}

    @property
    def run_label(self) -> str:
        """What names the parent run and Ray's folder (before the date-time):
        --run-name, else the trainable (by its function or class name) and,
        for RLlib, the environment."""
        if self.run_name:
            return self.run_name
        label = self.trainable.rsplit(":", 1)[-1]
        return f"{label}-{self.env}" if self.is_rllib else label

    @property
    def is_rllib(self) -> bool:
        """Whether the trainable is an RLlib algorithm (env, env runners, presets apply)."""
        from pbtflow.trainables import rllib_name

        return rllib_name(self.trainable) is not None

    def replace(self, **changes: Any) -> "Experiment":
        return dataclasses.replace(self, **changes)


def trainable_names() -> tuple[str, ...]:
    """The trainables pbtflow knows by name: its built-in ones and RLlib's."""
    from pbtflow.trainables import BUILTIN, RLLIB_ALGORITHMS

    return tuple(BUILTIN) + tuple(n.lower() for n in RLLIB_ALGORITHMS if n.lower() not in BUILTIN)


def _check(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise SettingError(f"{key}: {message}.")


def _check_preset(experiment: Experiment) -> None:
    """An RLlib trainable with presets takes the one for its environment's
    action space ('auto'), or the one the user names if it has it."""
    from pbtflow.trainables import RLLIB_PRESETS

    kinds = RLLIB_PRESETS.get(experiment.trainable)
    if kinds is None:  # another RLlib algorithm: the user's search space
        _check(experiment.preset == "auto", "preset",
               f"{experiment.trainable} has no pbtflow presets, but got preset={experiment.preset!r}; "
               "drop --preset and give mutations: in YAML")
        return
    name = experiment.trainable.upper()
    if experiment.preset != "auto":
        _check(experiment.preset in kinds, "preset",
               f"{name}'s presets are {', '.join(kinds)}, but got preset={experiment.preset!r}")
        return
    kind = _preset_for(experiment.env)
    if kind not in kinds:
        other = "dqn or ppo" if kind == "discrete" else "sac or ppo"
        raise SettingError(
            f"env: {experiment.env!r} has {kind} actions, but {name} here covers "
            f"{' and '.join(kinds)} ones; use --trainable {other}, or an environment with "
            f"{' and '.join(kinds)} actions.")
    experiment.preset = kind


def _preset_for(env_id: str) -> str:
    """The preset for an environment: 'discrete' or 'continuous' by its
    action space (gymnasium builds the env once to read it)."""
    import gymnasium

    try:
        env = gymnasium.make(env_id)
    except Exception as error:  # a missing extra (box2d, mujoco), a bad constructor
        raise SettingError(
            f"env: {env_id!r} cannot be built ({type(error).__name__}: {error}); install what it "
            "names (LunarLander and the other Box2D envs: pip install 'pbtflow[box2d]')") from None
    space = env.action_space
    env.close()
    if isinstance(space, (gymnasium.spaces.Discrete, gymnasium.spaces.MultiDiscrete)):
        return "discrete"
    if isinstance(space, gymnasium.spaces.Box):
        return "continuous"
    raise SettingError(
        f"preset: {env_id!r} has a {type(space).__name__} action space, which neither PPO preset "
        "covers; pass --preset discrete, continuous or cluster and your own mutations")


def _check_env(env_id: str) -> None:
    import gymnasium

    if env_id in gymnasium.registry:
        return
    close = difflib.get_close_matches(env_id, list(gymnasium.registry), n=1, cutoff=0.6)
    hint = f"did you mean {close[0]!r}?" if close else "list them with `python -c \"import gymnasium; print(*gymnasium.registry)\"`"
    raise SettingError(f"env: {env_id!r} is not a registered gymnasium environment id; {hint}")


def _coerce(f: dataclasses.Field, value: Any) -> Any:
    """Convert YAML/CLI values to the field's type, or fail naming the field."""
    kind = str(f.type)
    if value is None:
        if "None" in kind:
            return None
        raise SettingError(f"{f.name}: a value is required; remove the key to use the default "
                           f"({f.default!r}).")
    if kind.startswith("tuple"):  # two numbers: [1.2, 0.8], or a flag's "1.2 0.8" / "1.2,0.8"
        return _two_numbers(f, value)
    try:
        if kind.startswith("bool"):
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
                return value.lower() in ("true", "yes", "1")
            raise ValueError
        if kind.startswith("int"):
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        if kind.startswith("float"):
            if isinstance(value, bool):
                raise ValueError
            number = float(value)
            if math.isnan(number):
                raise ValueError
            return number
        if kind.startswith("str"):
            if not isinstance(value, (str, int, float)) or isinstance(value, bool):
                raise ValueError
            return str(value)
    except (TypeError, ValueError):
        wanted = kind.split(" ")[0].split("|")[0]
        raise SettingError(f"{f.name}: expected {wanted}, but got {value!r}; "
                           f"{f.metadata.get('help', '')}".rstrip("; ")) from None
    return value


def _two_numbers(f: dataclasses.Field, value: Any) -> tuple[float, float]:
    items = value if isinstance(value, (list, tuple)) else [value]
    words = [w for v in items for w in re.split(r"[\s,\[\]()]+", str(v)) if w]
    try:
        if any(isinstance(v, bool) for v in items):
            raise ValueError
        numbers = tuple(float(w) for w in words)
    except ValueError:
        numbers = ()
    if len(numbers) != 2 or not all(math.isfinite(n) for n in numbers):
        raise SettingError(f"{f.name}: expected two numbers (e.g. 1.2 0.8), but got "
                           f"{' '.join(words) or repr(value)}; {f.metadata['help']}")
    return numbers


# -- loading -------------------------------------------------------------------------
def field_names() -> list[str]:
    return [f.name for f in dataclasses.fields(Experiment)]


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read an experiment file; unknown keys fail with the closest valid key."""
    path = Path(path)
    if not path.is_file():
        raise SettingError(f"config: no such file {str(path)!r}; pass an existing YAML file to --config.")
    try:
        data = yaml.load(path.read_text(), Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader)
    except _DuplicateKey as exc:
        raise SettingError(f"config: {str(path)!r} names {exc.key!r} twice (lines {exc.first} and "
                           f"{exc.second}); keep one of them.") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "malformed YAML"
        raise SettingError(f"config: {str(path)!r} is not valid YAML{where} ({problem}); fix the file.") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise SettingError(f"config: {str(path)!r} must hold a mapping of settings (key: value), "
                           f"but holds a {type(data).__name__}.")
    settings: dict[str, Any] = {}
    for key, value in data.items():
        name = str(key).replace("-", "_")
        if name in settings:
            raise SettingError(f"config: {str(path)!r} names the setting {name!r} twice (as "
                               f"{name!r} and {name.replace('_', '-')!r}); keep one of them.")
        settings[name] = value
    check_keys(settings, source=str(path))
    return settings


class _DuplicateKey(yaml.YAMLError):
    def __init__(self, key: Any, first: int, second: int) -> None:
        super().__init__(key)
        self.key, self.first, self.second = key, first, second


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, except that a mapping naming a key twice is an error
    (plain YAML keeps the last one silently)."""

    def construct_mapping(self, node, deep=False):
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            line = key_node.start_mark.line + 1
            if isinstance(key, (str, int, float, bool)) and key in seen:
                raise _DuplicateKey(key, seen[key], line)
            if isinstance(key, (str, int, float, bool)):
                seen[key] = line
        return super().construct_mapping(node, deep)


def check_keys(data: Mapping[str, Any], source: str) -> None:
    valid = field_names()
    for key in data:
        if key not in valid:
            close = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
            hint = f"did you mean {close[0]!r}?" if close else f"valid keys: {', '.join(valid)}"
            raise SettingError(f"config: unknown key {key!r} in {source}; {hint}")


def from_sources(config_file: str | Path | None = None,
                 overrides: Mapping[str, Any] | None = None) -> Experiment:
    """Build the experiment: defaults < YAML file < flags."""
    values: dict[str, Any] = {}
    if config_file is not None:
        values.update(load_yaml(config_file))
    overrides = dict(overrides or {})
    check_keys(overrides, source="the overrides")
    values.update(overrides)
    return Experiment(**values)
