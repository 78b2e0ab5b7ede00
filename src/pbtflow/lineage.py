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
        entry["exploits"].append({"step": e.get("step"), "member_step": e.get("member_step"),
                                  "time": e.get("time"), "donor": e["donor_id"],
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


RAY_LOG = "pbt_global.txt"
KEPT_LOG = "pbt_global.before_resume_{}.txt"  # Ray's log as a resume found it


def read_ray_log(experiment_path: str | Path) -> list[dict[str, Any]]:
    """Ray's own record of the exploits, ``pbt_global.txt``, in order: one
    entry per exploit with the target's and the donor's trial index (Ray's
    experiment tags start with it), their training iterations as Ray logged
    them, and the new config. A resumed experiment's Ray starts the file
    afresh: the copies kept at each resume come first (with any exploit that
    Tune then undid, as it was decided)."""
    folder = Path(experiment_path)
    kept_lines: list[str] = []
    for number in range(1, count_resumes(folder) + 1):
        kept_lines += _lines(folder / KEPT_LOG.format(number))
    current = _lines(folder / RAY_LOG)
    if kept_lines and current[:len(kept_lines)] == kept_lines:  # a Ray that kept the old lines
        current = current[len(kept_lines):]
    return [_entry(line) for line in kept_lines + current]


def keep_ray_log(experiment_path: str | Path) -> int:
    """Before a resume: keep Ray's log as it is (the resumed Ray rewrites it
    from scratch); returns the number of resumes so far."""
    folder = Path(experiment_path)
    number = count_resumes(folder) + 1
    source = folder / RAY_LOG
    (folder / KEPT_LOG.format(number)).write_text(source.read_text() if source.exists() else "")
    return number


def count_resumes(experiment_path: str | Path) -> int:
    return len(list(Path(experiment_path).glob(KEPT_LOG.format("*"))))


def read_ray_policy(experiment_path: str | Path, trial_id: str) -> list[dict[str, Any]] | None:
    """Ray's ``pbt_policy_<trial_id>.txt``: the chain of exploits behind the
    trial's current state (its donors' history, then its own exploit); None
    when Ray wrote none (the trial never exploited)."""
    path = Path(experiment_path) / f"pbt_policy_{trial_id}.txt"
    return _read_policy_lines(path) if path.exists() else None


def _read_policy_lines(path: Path) -> list[dict[str, Any]]:
    return [_entry(line) for line in _lines(path)]


def _lines(path: Path) -> list[str]:
    return [line for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def _entry(line: str) -> dict[str, Any]:
    target, donor, target_iteration, donor_iteration, _donor_config, new_config = json.loads(line)
    return {"target": tag_index(target), "donor": tag_index(donor),
            "target_iteration": target_iteration, "donor_iteration": donor_iteration,
            "config": new_config}


def tag_index(tag: Any) -> int:
    """The trial index an experiment tag starts with ("3_lr=0.01" -> 3)."""
    return int(str(tag).split("_", 1)[0].split("@", 1)[0])


def trial_index(trial_id: str) -> int:
    """The trial index a Tune trial id ends with ("a1b2c_00003" -> 3)."""
    return int(str(trial_id).rsplit("_", 1)[-1])


def count_global_log(experiment_path: str | Path) -> dict[int, int]:
    """Exploits per trial index from Ray's own ``pbt_global.txt``."""
    counts: dict[int, int] = {}
    for entry in read_ray_log(experiment_path):
        counts[entry["target"]] = counts.get(entry["target"], 0) + 1
    return counts
