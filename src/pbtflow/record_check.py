"""The record check: what pbtflow logged to MLflow, reconciled with Ray's own
PBT log in the experiment folder (``pbt_global.txt``, ``pbt_policy_*.txt``).

For every trial: the number of exploits, the donors and the configuration
after each exploit (``pbt_events.json`` against Ray's log); every mutated
hyperparameter logged at every step, exactly once, with the value Ray's log
says the member trained with (the starting value until the first exploit,
then each exploit's new config from the next step on, until a resume undid
it); the running exploit
count; and each member's policy file, replayed from the events, against Ray's.
An empty list of differences means the record is complete.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping, Sequence

from pbtflow import lineage, names
from pbtflow.pbt import get_path

COMPLETE = "complete"


def _same(logged: Any, truth: Any) -> bool:
    try:
        return math.isclose(float(logged), float(truth), rel_tol=1e-9, abs_tol=1e-12)
    except (TypeError, ValueError):
        return str(logged) == str(truth)


def _config_differences(where: str, logged: Mapping[str, Any], truth: Mapping[str, Any],
                        keys: Sequence[str]) -> list[str]:
    return [f"{where}: {key} is {logged.get(key)!r} in MLflow but {get_path(truth, key)!r} in Ray's log"
            for key in keys if not _same(logged.get(key), get_path(truth, key))]


def compare(trials: Mapping[str, Mapping[str, Any]], mutated: Sequence[str],
            ray_log: Sequence[Mapping[str, Any]],
            ray_policies: Mapping[str, Sequence[Mapping[str, Any]] | None] | None) -> list[str]:
    """Differences between pbtflow's record and Ray's log (empty: complete).

    ``trials``: trial id -> {"params": starting values as logged (strings),
    "events": pbt_events.json, "hp": key -> [(step, value)], "iterations":
    [(step, training_iteration)], "exploits": last pbt/exploits value}.
    ``ray_log``: :func:`pbtflow.lineage.read_ray_log`; ``ray_policies``: trial
    id -> :func:`pbtflow.lineage.read_ray_policy`, or None not to compare them."""
    differences: list[str] = []
    by_index = {lineage.trial_index(tid): tid for tid in trials}
    ray_by_trial: dict[str, list[Mapping[str, Any]]] = {tid: [] for tid in trials}
    for number, entry in enumerate(ray_log, 1):
        target = by_index.get(entry["target"])
        if target is None:
            differences.append(f"Ray's exploit {number} (of trial index {entry['target']}) has no "
                               "child run in MLflow")
            continue
        ray_by_trial[target].append(entry)

    for trial_id, record in sorted(trials.items()):
        events, ray_events = record["events"], ray_by_trial[trial_id]
        if events is None:
            differences.append(f"{trial_id}: pbt_events.json is missing")
            events = []
        if len(events) != len(ray_events):
            differences.append(f"{trial_id}: {len(events)} exploits in MLflow but {len(ray_events)} "
                               "in Ray's pbt_global.txt")
        for number, (event, entry) in enumerate(zip(events, ray_events), 1):
            donor = by_index.get(entry["donor"])
            if event["donor_id"] != donor:
                differences.append(f"{trial_id}: exploit {number} copied {event['donor_id']} in "
                                   f"MLflow but {donor} in Ray's log")
            differences += _config_differences(f"{trial_id}: exploit {number}", event["new"],
                                               entry["config"], mutated)
        exploits = record.get("exploits")
        if record["iterations"] and exploits is not None:
            # pbt/exploits at the last step counts the exploits before it
            before_last = sum(1 for e in events if e.get("member_step", -1) < len(record["iterations"]) - 1)
            if int(exploits) != before_last:
                differences.append(f"{trial_id}: pbt/exploits ends at {int(exploits)} but "
                                   f"{before_last} exploits precede the last step")
        differences += _hp_differences(trial_id, record, mutated, ray_events)

    if ray_policies is not None:
        differences += _chain_differences(trials, mutated, ray_policies, by_index)
    return differences


def _hp_differences(trial_id: str, record: Mapping[str, Any], mutated: Sequence[str],
                    ray_events: Sequence[Mapping[str, Any]]) -> list[str]:
    """Every mutated hyperparameter at every step, once, with the value in force."""
    out = []
    steps = [s for s, _ in record["iterations"]]
    if steps != list(range(len(steps))):
        out.append(f"{trial_id}: training_iteration is logged at steps {_span(steps)}, not once at "
                   f"each of 0..{len(steps) - 1}")
    # (member step it follows, member step after which a resume undid it, config)
    switches = sorted(((e.get("member_step"), e.get(names.UNDONE_AT), entry["config"])
                       for e, entry in zip(record["events"] or [], ray_events)
                       if e.get("member_step") is not None), key=lambda x: x[0])
    for key in mutated:
        start = record["params"].get(key)
        if start is None:
            out.append(f"{trial_id}: the starting value of {key} is not a param")
            continue
        try:
            start = float(start)
        except ValueError:  # not a number: no hp/ metric to check
            continue
        rows = record["hp"].get(key, [])
        logged_steps = [s for s, _ in rows]
        if logged_steps != list(range(len(steps))):
            out.append(f"{trial_id}: hp/{key} is logged at steps {_span(logged_steps)}, not once at "
                       f"each of 0..{len(steps) - 1}")
            continue
        for step, value in rows:
            expected = start
            for member_step, undone_at, config in switches:
                if step > member_step and (undone_at is None or step <= undone_at):
                    expected = get_path(config, key)
            if not _same(value, expected):
                out.append(f"{trial_id}: hp/{key} is {value!r} at step {step} but Ray's log puts "
                           f"{expected!r} in force")
                break
    return out


def policy_files(events: Sequence[Mapping[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """The ``pbt_policy_<trial>.txt`` Ray writes, replayed from the exploit
    events in order: at each exploit Ray copies the donor's file over the
    copier's (only if the donor has one: a donor that never exploited leaves
    the copier's old lines in place) and appends the exploit."""
    files: dict[str, list[dict[str, Any]]] = {}
    for event in events:
        target, donor = event["trial_id"], event["donor_id"]
        lines = list(files[donor]) if donor in files else files.get(target, [])
        files[target] = lines + [{"trial": target, "donor": donor, "config": event["new"]}]
    return files


def _chain_differences(trials: Mapping[str, Mapping[str, Any]], mutated: Sequence[str],
                       ray_policies: Mapping[str, Sequence[Mapping[str, Any]] | None],
                       by_index: Mapping[int, str]) -> list[str]:
    """Each member's policy file replayed from the MLflow events against Ray's
    ``pbt_policy_<trial>.txt``: the same exploits, donors and configs."""
    out = []
    events = sorted((e for record in trials.values() for e in record["events"] or []),
                    key=lambda e: e.get("wall_time", 0))
    replayed = policy_files(events)
    for trial_id in sorted(trials):
        chain = replayed.get(trial_id, [])
        policy = ray_policies.get(trial_id) or []
        if len(chain) != len(policy):
            out.append(f"{trial_id}: {len(chain)} lines in its policy file replayed from MLflow but "
                       f"{len(policy)} in Ray's pbt_policy_{trial_id}.txt")
            continue
        for number, (change, entry) in enumerate(zip(chain, policy), 1):
            pair = (by_index.get(entry["target"]), by_index.get(entry["donor"]))
            if (change["trial"], change["donor"]) != pair:
                out.append(f"{trial_id}: line {number} of its policy file is {change['trial']} copying "
                           f"{change['donor']} in MLflow but {pair[0]} copying {pair[1]} in Ray's "
                           "policy file")
            out += _config_differences(f"{trial_id}: line {number} of its policy file", change["config"],
                                       entry["config"], mutated)
    return out


def _span(steps: Sequence[int]) -> str:
    if len(steps) > 8:
        return f"{list(steps[:4])}...{list(steps[-2:])} ({len(steps)} rows)"
    return str(list(steps))


def summary(differences: Sequence[str], limit: int = 4000) -> str:
    """The parent run's tag value: ``complete``, or the differences listed."""
    if not differences:
        return COMPLETE
    text = f"{len(differences)} differences: " + "; ".join(differences)
    return text if len(text) <= limit else text[:limit - 20] + " ... (truncated)"


def check(tracking_uri: str | None, run_id: str, experiment_path: str | None = None) -> list[str]:
    """Reconcile the MLflow record of parent run ``run_id`` with Ray's PBT log
    in ``experiment_path`` (default: the folder the run recorded), tag the
    parent with the outcome and return the differences."""
    from pbtflow import records, runs

    record = records.load_trial_records(tracking_uri, run_id)
    runs.end_orphans(record["client"], run_id)  # a driver killed hard left them RUNNING
    path = experiment_path or record["experiment_path"]
    if not path or not Path(path).is_dir():
        differences = [f"Ray's experiment folder {path!r} is not there to check against; pass "
                       "the folder that holds pbt_global.txt"]
    else:
        # A resumed Ray starts its policy files afresh without the donors'
        # history: they are compared only for experiments never resumed.
        policies = (None if lineage.count_resumes(path) else
                    {tid: lineage.read_ray_policy(path, tid) for tid in record["trials"]})
        differences = compare(record["trials"], record["mutated"], lineage.read_ray_log(path),
                              policies)
    records.tag_record_check(record["client"], run_id, summary(differences))
    return differences
