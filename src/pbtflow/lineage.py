"""From PBT's exploit events to each member's lineage and to the schedule the
best member really trained with, including what it inherited from its donors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable, Mapping


def build_lineage(events: Iterable[Mapping[str, Any]],
                  initial: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """For every trial: its initial hyperparameters and its ordered exploits
    (step, donor, donor step, hyperparameters after)."""
    lineage = {tid: {"initial": dict(cfg), "exploits": []} for tid, cfg in initial.items()}
    for e in events:
        entry = lineage.setdefault(e["trial_id"], {"initial": dict(e.get("old", {})), "exploits": []})
        entry["exploits"].append({"step": e.get("step"), "time": e.get("time"), "donor": e["donor_id"],
                                  "donor_step": e.get("donor_step"), "config": dict(e["new"])})
    return lineage


def best_schedule(events: list[Mapping[str, Any]], initial: Mapping[str, Mapping[str, Any]],
                  trial_id: str) -> dict[str, Any]:
    """The hyperparameters ``trial_id`` trained with over time (in training
    iterations). An exploit at step s copies the donor's checkpoint from
    donor_step d: the member's past is then the donor's past up to d, so the
    schedule follows the chain of donors backwards, as Ray's PBT replay does."""
    def chain(tid: str, before: int) -> tuple[str, list[dict[str, Any]]]:
        for index in range(before - 1, -1, -1):
            e = events[index]
            if e["trial_id"] == tid:
                root, changes = chain(e["donor_id"], index)
                return root, changes + [{"step": e.get("donor_step"), "config": dict(e["new"]),
                                         "trial": tid, "donor": e["donor_id"]}]
        return tid, []

    root, changes = chain(trial_id, len(events))
    return {"trial_id": trial_id, "root": root, "initial": dict(initial.get(root, {})),
            "changes": changes}


def config_at(schedule: Mapping[str, Any], step: int) -> dict[str, Any]:
    """The hyperparameters in force at training iteration ``step`` (1-based)."""
    config = dict(schedule["initial"])
    for change in schedule["changes"]:
        if change["step"] is not None and step > change["step"]:
            config.update(change["config"])
    return config


def count_global_log(experiment_path: str | Path) -> dict[int, int]:
    """Exploits per trial index from Ray's own ``pbt_global.txt``."""
    counts: dict[int, int] = {}
    path = Path(experiment_path) / "pbt_global.txt"
    if not path.exists():
        return counts
    for line in path.read_text().splitlines():
        if line.strip():
            tag = json.loads(line)[0]  # "<index>_<experiment tag>"
            index = int(str(tag).split("_", 1)[0])
            counts[index] = counts.get(index, 0) + 1
    return counts
