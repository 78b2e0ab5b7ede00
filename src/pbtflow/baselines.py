"""The no-PBT baselines (``--baseline grid|random``): the same trainable, the
same budget and population, trained by Tune's FIFO scheduler with the
hyperparameters held fixed, so MLflow compares them with the PBT run.

- ``grid``: the PBT run's own starting points (for quadratic h = (1, 0) and
  (0, 1); for lr-schedule lr = 1e-4 for every member);
- ``random``: each mutated hyperparameter's starting value sampled from its
  mutation domain (a random search over the range PBT explores).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from ray import tune
from ray.tune.schedulers import FIFOScheduler
from ray.tune.search.sample import Domain

from pbtflow.experiment import BASELINES as KINDS
from pbtflow.pbt import check_mutations
from pbtflow.trainables import TrainableSpec


class NoPBT(FIFOScheduler):
    """Tune's FIFO scheduler; records no exploits (there are none)."""

    def __init__(self) -> None:
        super().__init__()
        self.events: list[dict[str, Any]] = []


def _domain(mutation: Any) -> Any:
    """A Tune search-space entry that samples what a mutation can produce."""
    if isinstance(mutation, Domain):
        return mutation
    if isinstance(mutation, list):
        return tune.choice(mutation)
    if callable(mutation):
        return tune.sample_from(lambda _spec: mutation())
    if isinstance(mutation, Mapping):
        return {k: _domain(v) for k, v in mutation.items()}
    return mutation


def _merge(space: dict[str, Any], sampled: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(space)
    for key, value in sampled.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merge(dict(out[key]), value)
        else:
            out[key] = value
    return out


def baseline_spec(spec: TrainableSpec, kind: str) -> TrainableSpec:
    """The spec of the ``kind`` baseline for a PBT spec."""
    if kind not in KINDS:
        raise ValueError(f"baseline: {kind!r} is not one of {', '.join(KINDS)}.")
    if kind == "grid":
        return spec
    sampled = {k: _domain(v) for k, v in check_mutations(dict(spec.mutations)).items()}
    return dataclasses.replace(spec, param_space=_merge(spec.param_space, sampled),
                               points_to_evaluate=None)
