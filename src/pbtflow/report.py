"""Plain-text report of a tuned experiment: the leaderboard of its trials and
the schedule the best one trained with."""

from __future__ import annotations

from typing import Any, Mapping

from pbtflow import names


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def format_report(record: Mapping[str, Any]) -> str:
    parent, metric, children = record["parent"], record["metric"], record["children"]
    best = parent.data.tags.get(names.BEST_TRIAL, "")
    by_training = parent.data.tags.get(names.BEST_BY_TRAINING)
    lines = [f"parent run {parent.info.run_id} ({parent.info.status}), metric {metric}, "
             f"{len(children)} trials, best trial {best or '-'}"
             + ("" if by_training is None else
                " by evaluation" + ("" if by_training == best else f", {by_training} by training metric")),
             ""]
    evaluated = any(names.EVAL_RETURN_MEAN in c.data.metrics for c in children)
    rows = []
    for child in children:
        m = child.data.metrics
        evaluation = (f"{_fmt(m[names.EVAL_RETURN_MEAN])} +- {_fmt(m.get(names.EVAL_RETURN_STD, 0.0))} "
                      f"({int(m.get(names.EVAL_EPISODES, 0))})" if names.EVAL_RETURN_MEAN in m else "-")
        rows.append((child.data.tags.get(names.TRIAL_ID, "?"), m.get(metric),
                     int(m.get(names.EXPLOITS, 0)), child.info.status, evaluation,
                     m.get(names.EVAL_RETURN_MEAN)))
    reverse = parent.data.params.get("mode", "max") == "max"
    if evaluated:  # best evaluation first, then the others by training metric
        rows.sort(key=lambda r: (r[5] is None, -(r[5] or 0),
                                 r[1] is None, -(r[1] or 0) if reverse else (r[1] or 0)))
    else:
        rows.sort(key=lambda r: (r[1] is None, -(r[1] or 0) if reverse else (r[1] or 0)))
    header = ("trial", f"final {metric}", "exploits", "status") + (
        ("evaluation return +- std (episodes)",) if evaluated else ())
    table = [header] + [(t, _fmt(v) if v is not None else "-", str(x), s) + ((e,) if evaluated else ())
                        for t, v, x, s, e, _ in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        lines.append("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
    for model_id in record.get("policy_models", []):
        lines += ["", f"best policy as an MLflow model: models:/{model_id} "
                      "(mlflow.pyfunc.load_model; observations in, actions out)"]
    schedule = record.get("best_schedule")
    if schedule:
        lines += ["", f"best schedule ({schedule['trial_id']}, inherited from {schedule['root']}):",
                  "  from step 0: " + ", ".join(f"{k}={_fmt(v)}" for k, v in schedule["initial"].items())]
        for change in schedule["changes"]:
            lines.append(f"  from step {change['step']} (copied by {change['trial']} from "
                         f"{change['donor']}): " + ", ".join(f"{k}={_fmt(v)}"
                                                             for k, v in change["config"].items()))
    return "\n".join(lines)
