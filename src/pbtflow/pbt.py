"""The PBT scheduler, the mutation grammar and the explore function.

A mutation is what Ray's ``hyperparam_mutations`` accepts: a list (explore
moves to an adjacent entry), a Tune domain, a callable or a nested dict. YAML
files write domains as one-key mappings: ``{uniform: [0.9, 1.0]}``,
``{loguniform: [1e-5, 1e-3]}``, ``{randint: [1, 31]}``, ``{choice: [...]}``,
``{qloguniform: [5e-3, 1e-1, 5e-4]}``, ``{quniform: [...]}``.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import threading
import time
from pathlib import Path
from typing import Any, Callable, Mapping

from ray import tune
from ray.tune.schedulers import PopulationBasedTraining, PopulationBasedTrainingReplay
from ray.tune.search.sample import Categorical, Domain, Float, Integer

from pbtflow import ray_internals
from pbtflow.experiment import Experiment, SettingError

log = logging.getLogger(__name__)

_DOMAINS = {
    "uniform": tune.uniform,
    "quniform": tune.quniform,
    "loguniform": tune.loguniform,
    "qloguniform": tune.qloguniform,
    "randint": tune.randint,
    "lograndint": tune.lograndint,
    "choice": lambda *xs: tune.choice(list(xs)),
}


def is_domain(spec: Any) -> bool:
    """Whether ``spec`` is a Tune domain written as YAML: {uniform: [low, high]}."""
    return isinstance(spec, Mapping) and len(spec) == 1 and next(iter(spec)) in _DOMAINS


def to_mutation(spec: Any, name: str = "mutations") -> Any:
    """Turn one mutation as written in YAML or Python into what Ray accepts."""
    if isinstance(spec, Domain) or callable(spec):
        return spec
    if isinstance(spec, (list, tuple)):
        if not spec:
            raise SettingError(f"{name}: a list mutation needs at least one value, but got [].")
        return list(spec)
    if isinstance(spec, Mapping):
        if is_domain(spec):
            kind, args = next(iter(spec.items()))
            args = args if isinstance(args, (list, tuple)) else [args]
            try:
                if kind == "choice":
                    return _DOMAINS[kind](*args)
                return _DOMAINS[kind](*[float(a) if "uniform" in kind else a for a in args])
            except (TypeError, ValueError) as exc:
                raise SettingError(f"{name}: {{{kind}: {list(args)}}} is not a valid Tune domain "
                                   f"({exc}); write e.g. {{{kind}: [low, high]}}.") from None
        if not spec:
            raise SettingError(f"{name}: an empty mapping mutates nothing; remove it or give values.")
        return {k: to_mutation(v, f"{name}.{k}") for k, v in spec.items()}
    raise SettingError(
        f"{name}: a mutation must be a list, a Tune domain, a callable or a mapping, but got "
        f"{spec!r} ({type(spec).__name__}); write e.g. [1e-3, 1e-4] or {{uniform: [0.9, 1.0]}}.")


def check_mutations(mutations: Mapping[str, Any]) -> dict[str, Any]:
    """Validate and convert a whole mutations mapping; a numeric range must
    hold more than one value (not empty, not reversed)."""
    if not mutations:
        raise SettingError("mutations: PBT needs at least one hyperparameter to mutate.")
    converted = {k: to_mutation(v, f"mutations.{k}") for k, v in mutations.items()}
    for key in flatten_keys(converted):
        mutation = get_path(converted, key)
        found = bounds_of(mutation)
        if found and isinstance(mutation, (Float, Integer)) and not found[0] < found[1]:
            kind = "randint" if isinstance(mutation, Integer) else "uniform"
            low, high = mutation.lower, mutation.upper
            span = f"[{low:g}, {high:g})" if kind == "randint" else f"[{low:g}, {high:g}]"
            raise SettingError(
                f"mutations.{key}: the range {span} holds no value to explore (empty or "
                f"reversed); write {{{kind}: [low, high]}} with low < high"
                + (" (randint's high is exclusive)" if kind == "randint" else "") + ".")
    return converted


def check_initial_in_range(initial: Mapping[str, Any], mutations: Mapping[str, Any]) -> None:
    """A fixed starting value outside its mutation's bounds would be clipped at
    the first explore: refuse it, naming both."""
    for key in flatten_keys(mutations):
        found = bounds_of(get_path(mutations, key))
        value = get_path(initial, key)
        if found is None or isinstance(value, (bool, Domain)) or not isinstance(value, (int, float)):
            continue
        low, high, _ = found
        if not low <= value <= high:
            raise SettingError(
                f"initial.{key}: {value:g} lies outside its mutation's range [{low:g}, {high:g}], "
                "so PBT would clip it at the first explore; start inside the range or widen the "
                "mutation.")


def flatten_keys(mutations: Mapping[str, Any], prefix: str = "") -> list[str]:
    """Dotted names of the mutated hyperparameters (nested dicts joined with '.');
    a YAML domain such as ``{uniform: [0.9, 1.0]}`` is one hyperparameter."""
    keys = []
    for key, value in mutations.items():
        if isinstance(value, Mapping) and not is_domain(value):
            keys += flatten_keys(value, f"{prefix}{key}.")
        else:
            keys.append(f"{prefix}{key}")
    return keys


def get_path(config: Mapping[str, Any], dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(config, Mapping) or part not in config:
            return None
        config = config[part]
    return config


def _set_path(config: dict, dotted: str, value: Any) -> None:
    *parents, last = dotted.split(".")
    for part in parents:
        config = config.setdefault(part, {})
    config[last] = value


def bounds_of(mutation: Any) -> tuple[float, float, bool] | None:
    """(low, high, is_int) of a numeric mutation, or None if it has no bounds."""
    if isinstance(mutation, Integer):
        return float(mutation.lower), float(mutation.upper - 1), True  # randint's upper is exclusive
    if isinstance(mutation, Float):
        return float(mutation.lower), float(mutation.upper), False
    values = mutation.categories if isinstance(mutation, Categorical) else mutation
    if isinstance(values, list) and values and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        return float(min(values)), float(max(values)), all(isinstance(v, int) for v in values)
    return None


class ExploreError(SettingError):
    """The user's explore function broke its contract; the message names it."""


def _leaves(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in config.items():
        if isinstance(value, Mapping) and value:
            out.update(_leaves(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _same(a: Any, b: Any) -> bool:
    try:
        return type(a) is type(b) and bool(a == b)
    except Exception:  # e.g. arrays: compare what they print
        return repr(a) == repr(b)


def _users_explore(function: Callable[[dict], Any], name: str,
                   mutated: list[str]) -> Callable[[dict], dict]:
    """``function`` with its contract enforced: it returns the config dict and
    changes mutated keys only (anything else would leave the record)."""
    def mutable(key: str) -> bool:
        return any(key == m or key.startswith(m + ".") for m in mutated)

    def explore(config: dict) -> dict:
        before = _leaves(copy.deepcopy(config))
        result = function(config)
        if not isinstance(result, dict):
            raise ExploreError(
                f"explore: {name!r} must return the config dict, but returned "
                f"{type(result).__name__}; return the config it was given, changed or not.")
        after = _leaves(result)
        changed = sorted(k for k in before.keys() | after.keys() if not mutable(k) and (
            k not in before or k not in after or not _same(before[k], after[k])))
        if changed:
            raise ExploreError(
                f"explore: {name!r} changed {', '.join(changed)}, which PBT does not mutate; change "
                f"only the mutated keys ({', '.join(mutated)}) or add those keys to the mutations.")
        return result

    return explore


def make_explore(mutations: Mapping[str, Any],
                 repair: Callable[[dict, dict], None] | None = None,
                 users: Callable[[dict], Any] | None = None,
                 users_name: str = "") -> Callable[[dict], dict]:
    """An explore function that puts every mutated value back inside its
    mutation's bounds (PBT's perturbation factors can leave them), then runs
    the user's explore function (``users``, named ``users_name``), then lets the
    trainable repair what depends on several values."""
    users = _users_explore(users, users_name, flatten_keys(mutations)) if users else None
    bounds = {}
    for key in flatten_keys(mutations):
        found = bounds_of(get_path(mutations, key))
        if found:
            bounds[key] = found

    def explore(config: dict) -> dict:
        for key, (low, high, is_int) in bounds.items():
            value = get_path(config, key)
            try:
                number = float(value)
            except (TypeError, ValueError):
                number = math.nan
            if math.isnan(number):
                number = low  # unusable value: fall back to the lower bound
            number = min(max(number, low), high)
            _set_path(config, key, int(round(number)) if is_int else number)
        if users is not None:
            config = users(config)
        if repair is not None:
            repair(config, {k: (lo, hi) for k, (lo, hi, _) in bounds.items()})
        return config

    return explore


class Recording:
    """Mixed into Ray's PBT and PB2: keeps every exploit as an event, so that
    the tracking code can log the schedule and the lineage the scheduler
    discovered.

    A result without the metric (an RL return before the first episode ends)
    continues silently: pbtflow's stopper decides whether the metric is only
    pending or never reported, and says so in one sentence."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, require_attrs=False, **kwargs)
        self.events: list[dict[str, Any]] = []  # exploits
        self.changes = self.events  # every config change of a member is an exploit
        self.mutated_keys = flatten_keys(self._hyperparam_mutations)
        # pbtflow's PopulationStopper: a broken user explore function stops the
        # population through it with one sentence (an exception raised here
        # would reach the user as Tune's wrapped traceback).
        self.stopper: Any = None

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        if self._metric not in result or self._time_attr not in result:
            return self.CONTINUE
        synced_before = self._next_perturbation_sync
        decision = super().on_trial_result(tune_controller, trial, result)
        if self._synch and self._next_perturbation_sync != synced_before:
            # Ray's synchronous PBT sets the next sync point to the time the
            # members reached when that lies beyond one interval (results
            # without the metric, e.g. RL iterations that end no episode, make
            # it so); then no paused member is behind it and none is ever
            # resumed. The next sync is one interval after the members' time.
            reached = max(state.last_train_time
                          for state in ray_internals.pbt_trial_states(self).values())
            if self._next_perturbation_sync <= reached:
                self._next_perturbation_sync = reached + self._perturbation_interval
        return decision

    def _exploit(self, tune_controller, trial, trial_to_clone):
        states = ray_internals.pbt_trial_states(self)
        state, donor_state = states[trial], states[trial_to_clone]
        before = {k: get_path(trial.config, k) for k in self.mutated_keys}
        step = (state.last_result or {}).get("training_iteration")  # the result that decided
        at = state.last_train_time
        try:
            super()._exploit(tune_controller, trial, trial_to_clone)
        except ExploreError as exc:  # raised before Ray changed the trial
            if self.stopper is None:
                raise
            self.stopper.error = str(exc)
            return
        self.events.append({
            "trial_id": trial.trial_id,
            "donor_id": trial_to_clone.trial_id,
            "time": at,  # the time_attr value at the exploit
            # training iterations: the member's at the exploit, and the donor
            # checkpoint's, which the member continues from
            "step": step,
            "donor_step": (donor_state.last_result or {}).get("training_iteration"),
            "score": state.last_score,
            "donor_score": donor_state.last_score,
            "old": before,
            "new": {k: get_path(trial.config, k) for k in self.mutated_keys},
            "wall_time": time.time(),
        })
        if self.stopper is not None:
            self.stopper.inherit(trial.trial_id, trial_to_clone.trial_id, self.events[-1]["donor_step"])


class RecordingPBT(Recording, PopulationBasedTraining):
    """Ray's PopulationBasedTraining, recorded."""


_PB2_LOCK = threading.Lock()


def __getattr__(name: str) -> Any:
    """``RecordingPB2``, defined once, on first use: Ray's PB2 imports
    scikit-learn and SciPy, 0.8 s of every start when the experiment uses PBT."""
    if name != "RecordingPB2":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    with _PB2_LOCK:
        if name in globals():  # defined meanwhile by another thread
            return globals()[name]
        from ray.tune.schedulers.pb2 import PB2

        class RecordingPB2(Recording, PB2):
            """Ray's PB2 (Population Based Bandits: a Gaussian-process bandit
            picks the new values within the mutations' bounds), recorded."""

        RecordingPB2.__qualname__ = "RecordingPB2"  # pickled with Tune's state under this name
        globals()[name] = RecordingPB2
        return RecordingPB2


class ScheduleReplay(PopulationBasedTrainingReplay):
    """Ray's PBT replay driven by pbtflow's ``best_schedule.json``: one member
    trains from scratch and switches hyperparameters at the recorded steps.
    ``base_config`` supplies everything the schedule does not mutate."""

    def __init__(self, schedule_file: str | Path, base_config: Mapping[str, Any]) -> None:
        self._base = copy.deepcopy(dict(base_config))
        self.events: list[dict[str, Any]] = []  # a replay never exploits
        self.changes: list[dict[str, Any]] = []  # the schedule's switches, as they happen
        super().__init__(str(schedule_file))

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        before = trial.config
        decision = super().on_trial_result(tune_controller, trial, result)
        if trial.config is not before:  # the schedule switched: the next results use it
            self.changes.append({"trial_id": trial.trial_id, "step": result.get("training_iteration"),
                                 "new": trial.config})
        return decision

    def _full(self, hyperparameters: Mapping[str, Any]) -> dict:
        config = copy.deepcopy(self._base)
        for key, value in hyperparameters.items():
            _set_path(config, key, value)
        return config

    def _load_policy(self, policy_file: str):
        schedule = json.loads(Path(policy_file).read_text())
        current = dict(schedule["initial"])
        policy = []
        for change in schedule["changes"]:
            current.update(change["config"])
            policy.append((change["step"], self._full(current)))
        return self._full(schedule["initial"]), policy


def pb2_bounds(mutations: Mapping[str, Any]) -> dict[str, Any]:
    """PB2's ``hyperparam_bounds`` from pbtflow's mutations: each continuous
    range as [low, high]; a list of numbers as the range it spans (PB2 proposes
    values in between). A list or choice of anything else has no range."""
    bounds: dict[str, Any] = {}
    for key in flatten_keys(mutations):
        mutation = get_path(mutations, key)
        found = bounds_of(mutation)
        if found is None:
            shown = (f"{{choice: {mutation.categories}}}" if isinstance(mutation, Categorical)
                     else repr(mutation))
            raise SettingError(
                f"mutations.{key}: PB2 explores continuous ranges only, but got {shown}; write a "
                "range such as {uniform: [low, high]} or a list of numbers, or use --scheduler pbt.")
        _set_path(bounds, key, [found[0], found[1]])
        if isinstance(mutation, list):
            log.info("pbtflow: PB2 explores mutations.%s (the list %s) as the range [%g, %g].",
                     key, mutation, found[0], found[1])
    return bounds


def build_scheduler(experiment: Experiment, metric: str, mutations: Mapping[str, Any],
                    repair: Callable[[dict, dict], None] | None = None,
                    explore: Callable[[dict], Any] | None = None) -> Recording:
    """Ray's PBT (or PB2) with every option of the experiment; ``explore`` is the
    user's explore function (``experiment.explore``, already imported)."""
    mutations = check_mutations(copy.deepcopy(dict(mutations)))
    common = dict(
        time_attr=experiment.time_attr,
        metric=metric,
        mode=experiment.mode,
        perturbation_interval=experiment.perturbation_interval,
        quantile_fraction=experiment.quantile_fraction,
        custom_explore_fn=make_explore(mutations, repair, explore, experiment.explore or ""),
        synch=experiment.synch,
    )
    if experiment.scheduler == "pb2":
        return __getattr__("RecordingPB2")(hyperparam_bounds=pb2_bounds(mutations), **common)
    return RecordingPBT(
        burn_in_period=experiment.burn_in_period,
        resample_probability=experiment.resample_probability,
        perturbation_factors=tuple(experiment.perturbation_factors),
        hyperparam_mutations=mutations,
        **common,
    )
