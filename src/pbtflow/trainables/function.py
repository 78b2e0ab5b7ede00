"""A user's own trainable: a function as ``package.module:function`` or a
``tune.Trainable`` subclass as ``package.module:Class``, and the wrapper every
function trainable runs in (the built-in toys included), which hands the
experiment's checkpoint interval and seed to :mod:`pbtflow.checkpoint` inside
the worker."""

from __future__ import annotations

import functools
import importlib
import inspect
import logging
import os
import sys
from typing import Any, Callable

from ray import cloudpickle, tune

from pbtflow import checkpoint
from pbtflow.experiment import SettingError
from pbtflow.pbt import check_initial_in_range, check_mutations, is_domain, to_mutation
from pbtflow.trainables import TrainableSpec

log = logging.getLogger(__name__)


def _import(path: str, setting: str) -> Any:
    """The object ``package.module:name`` names; one sentence when it is not there."""
    module_name, _, attr = path.partition(":")
    if "" not in sys.path and os.getcwd() not in sys.path:
        # `python src/tune_ppo.py` puts src/ on the path, not the folder it runs
        # in; a user's package there should import as it would with `python -m`.
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # ImportError, or an error raised while importing it
        raise SettingError(
            f"{setting}: {module_name!r} must be an importable module, but got {setting}={path!r} "
            f"({type(exc).__name__}: {exc}); run from the folder that holds it, add that folder to "
            "PYTHONPATH, or pip install your package.") from None
    found = getattr(module, attr, None)
    if found is None:
        public = sorted(n for n, v in vars(module).items() if callable(v) and not n.startswith("_")
                        and getattr(v, "__module__", None) == module.__name__)
        raise SettingError(
            f"{setting}: module {module_name!r} must define {attr!r}, but got {setting}={path!r}; "
            f"its functions and classes are: {', '.join(public) or 'none'}.")
    # Ship the module's code with the trials: Ray's workers do not see the
    # driver's sys.path, only what is installed or in the folder Ray started
    # in. What the module itself imports must still be importable there.
    cloudpickle.register_pickle_by_value(module)
    return found


def load(path: str, setting: str = "trainable") -> Callable[[dict], Any]:
    """Import ``package.module:function`` and check that it can take a config;
    fail with one sentence naming ``setting`` otherwise (before Ray starts)."""
    return _checked_function(_import(path, setting), path, setting)


def _checked_function(function: Any, path: str, setting: str) -> Callable[[dict], Any]:
    attr = path.partition(":")[2]
    if not callable(function) or inspect.isclass(function):
        kind = "a class that is not a ray.tune.Trainable" if inspect.isclass(function) else \
            f"a {type(function).__name__}"
        classes = " or a tune.Trainable subclass" if setting == "trainable" else ""
        raise SettingError(
            f"{setting}: {path!r} must name a function taking the config dict{classes}, but got "
            f"{kind}; point it at a `def {attr}(config): ...`.")
    try:
        inspect.signature(function).bind({})
    except TypeError:
        raise SettingError(
            f"{setting}: {path!r} must accept exactly one argument (the config dict), but got "
            f"{attr}{inspect.signature(function)}; define it as `def {attr}(config): ...`.") from None
    except ValueError:  # builtins without a signature: let Tune try
        pass
    return function


def wrap(function: Callable[[dict], Any], interval: int, seed: int | None) -> Callable[[dict], Any]:
    """The function Tune runs: sets the checkpoint interval and seed for
    :mod:`pbtflow.checkpoint` in the worker, then calls ``function``."""

    @functools.wraps(function)
    def trainable(config: dict) -> Any:
        checkpoint.configure(interval=interval, seed=seed)
        return function(config)

    return trainable


def _initial_value(value: Any) -> Any:
    """A YAML domain such as {uniform: [0.5, 2.0]} becomes a Tune domain (each
    member samples its starting value); anything else is the value itself."""
    return to_mutation(value, "initial") if is_domain(value) else value


def spec(function: Callable[[dict], Any], experiment, *, metric: str | None,
         initial: dict[str, Any], mutations: dict[str, Any] | None,
         **extra: Any) -> TrainableSpec:
    """The TrainableSpec of a function trainable (or a ``tune.Trainable``
    subclass); ``experiment.initial`` and ``experiment.mutations`` override the
    given ones."""
    initial = {**initial, **{k: _initial_value(v) for k, v in (experiment.initial or {}).items()}}
    mutations = experiment.mutations if experiment.mutations is not None else mutations
    metric = experiment.metric or metric
    if metric is None:
        raise SettingError(
            f"metric: a custom trainable needs the metric PBT ranks members by, but got none for "
            f"trainable={experiment.trainable!r}; pass --metric with a key your function reports.")
    if not mutations:
        raise SettingError(
            f"mutations: PBT needs the hyperparameters to mutate, but got none for "
            f"trainable={experiment.trainable!r}; add `mutations:` to the --config YAML file "
            "(e.g. lr: {loguniform: [1.0e-4, 1.0e-1]}) or pass Experiment(mutations=...).")
    mutations = check_mutations(mutations)
    check_initial_in_range(experiment.initial or {}, mutations)
    is_class = inspect.isclass(function)
    reuse = reuses_actors(function) if is_class else True
    if is_class and not reuse:
        log.info("pbtflow: %s does not implement reset_config, so Tune cannot hand a live worker "
                 "to another member: every exploit (and pause) restarts the member's worker and "
                 "restores its checkpoint. Implement reset_config(self, new_config) -> True to "
                 "reuse workers.", experiment.trainable)
    trainable = function if is_class else wrap(function, experiment.perturbation_checkpoint_interval,
                                                experiment.seed)
    return TrainableSpec(
        trainable=tune.with_resources(trainable, {"cpu": experiment.cpus_per_trial}),
        param_space=initial,
        metric=metric,
        mutations=mutations,
        hyperparameters=tuple(initial),
        reuse_actors=reuse,
        function=not is_class,  # a class checkpoints when Tune asks it to
        **extra,
    )


def build(experiment) -> TrainableSpec:
    """A user's ``package.module:function`` trainable, or a ``tune.Trainable``
    subclass as ``package.module:Class`` (the shape of Ray's class examples)."""
    found = _import(experiment.trainable, "trainable")
    if inspect.isclass(found) and issubclass(found, tune.Trainable):
        return spec(found, experiment, metric=None, initial={}, mutations=None)
    function = _checked_function(found, experiment.trainable, "trainable")
    return spec(function, experiment, metric=None, initial={}, mutations=None)


def reuses_actors(cls: type) -> bool:
    """Whether Tune can hand a class trainable's live actor to another member:
    only when the class implements ``reset_config`` (Tune fails the trial
    otherwise)."""
    return getattr(cls, "reset_config", None) is not tune.Trainable.reset_config
