"""What a person watching the run sees: a compact population table (member,
iteration, metric, the mutated hyperparameters in force, exploits), redrawn
in place on a terminal and printed as plain lines elsewhere (CI, Azure ML
logs), and one line per exploit."""

from __future__ import annotations

import logging
import shutil
import sys
import time
from collections import Counter
from typing import Any, TextIO

from ray import tune as ray_tune

from pbtflow import credentials, names, tracking
from pbtflow.lineage import trial_index
from pbtflow.pbt import get_path

PREFIX = "[pbtflow] "
MAX_ROWS = 12  # members shown, best first; the rest are counted
# Column headings for long names (RLlib's); any other key is shown as it is.
SHORT = {names.RETURN_MEAN: "return", "train_batch_size_per_learner": "batch",
         "minibatch_size": "minibatch", "num_epochs": "epochs", "entropy_coeff": "entropy",
         "vf_loss_coeff": "vf_coeff", "clip_param": "clip", "target_network_update_freq": "target_freq"}


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    return f"{value:.4g}"


class _Printed(logging.Handler):
    """Tells the table that a log line went to the console below it, so that
    the next table is printed below that line instead of over it."""

    def __init__(self, progress: "Progress") -> None:
        super().__init__()
        self.progress = progress

    def emit(self, record: logging.LogRecord) -> None:
        self.progress._drawn = 0


class Progress(ray_tune.Callback):
    """The population table every ``every_s`` seconds (and after each
    exploit on a terminal), and one ``[pbt]`` line per exploit. ``redraw``:
    redraw the table in place on a terminal (off when Ray forwards worker
    output to the console, which would land inside the table)."""

    def __init__(self, metric: str, mode: str, scheduler: Any, mutated: list[str],
                 every_s: float = 10.0, stream: TextIO | None = None, redraw: bool = True) -> None:
        self.metric, self.mode, self.scheduler, self.every_s = metric, mode, scheduler, every_s
        self.shown = [k for k in mutated if not credentials.is_secret(k)]
        self.stream, self.redraw = stream, redraw
        self._last_draw, self._events_seen, self._drawn = float("-inf"), 0, 0
        self._printed = _Printed(self)
        self._rows: dict[str, tuple[Any, float | None, dict[str, Any]]] = {}
        self._exploits: Counter = Counter()
        self._start = time.monotonic()

    @property
    def _out(self) -> TextIO:
        return self.stream or sys.stdout

    def _terminal(self) -> bool:
        return self.redraw and bool(getattr(self._out, "isatty", lambda: False)())

    # Log lines from pbtflow (via the root logger) and from Ray's own logger.
    _WATCHED = ("", "ray")

    def setup(self, **info):
        for name in self._WATCHED:
            logger = logging.getLogger(name)
            if logger.handlers:  # (a handler on a bare root would mute logging's last resort)
                logger.addHandler(self._printed)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        value = tracking.as_number(tracking.flat_result(result).get(self.metric))
        previous = self._rows.get(trial.trial_id, (None, None, {}))[1]
        self._rows[trial.trial_id] = (result.get(names.TRAINING_ITERATION),
                                      value if value is not None else previous,
                                      {k: get_path(trial.config, k) for k in self.shown})
        lines = []
        for event in self.scheduler.events[self._events_seen:]:
            self._exploits[event["trial_id"]] += 1
            changed = ", ".join(f"{k} {_fmt(event['old'].get(k))} -> {_fmt(event['new'][k])}"
                                for k in event["new"]
                                if not credentials.is_secret(k) and event["new"][k] != event["old"].get(k))
            lines.append(f"[pbt] {self._name(event['trial_id'])} copies {self._name(event['donor_id'])} "
                         f"at t={event['time']:g}: {changed or 'no change'}")
        self._events_seen = len(self.scheduler.events)
        due = time.monotonic() - self._last_draw >= self.every_s
        if lines or due:
            self._draw(lines, table=due or (self._terminal() and self._drawn > 0))

    def on_experiment_end(self, trials, **info):
        for name in self._WATCHED:
            logging.getLogger(name).removeHandler(self._printed)
        if self._rows:
            self._draw([], table=True)
            self._drawn = 0  # what follows is printed below the last table

    def __getstate__(self) -> dict:  # saved with Tune's experiment state: no handler
        state = dict(self.__dict__)
        state.pop("_printed", None)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._printed = _Printed(self)

    @staticmethod
    def _name(trial_id: str) -> str:
        return f"member-{trial_index(trial_id)}"

    def table(self) -> list[str]:
        """The population, best first, as text lines (at most MAX_ROWS members)."""
        reverse = self.mode == "max"
        order = sorted(self._rows, key=lambda t: (self._rows[t][1] is None,
                                                  -(self._rows[t][1] or 0) if reverse else (self._rows[t][1] or 0)))
        header = (["member", "iter", SHORT.get(self.metric, self.metric)]
                  + [SHORT.get(k, k) for k in self.shown] + ["exploits"])
        body = [[self._name(t), _fmt(self._rows[t][0]), _fmt(self._rows[t][1])]
                + [_fmt(self._rows[t][2].get(k)) for k in self.shown] + [str(self._exploits[t])]
                for t in order[:MAX_ROWS]]
        widths = [max(len(row[i]) for row in [header] + body) for i in range(len(header))]
        elapsed = time.monotonic() - self._start
        members, exploits = len(self._rows), self._exploits.total()
        lines = [f"{members} member{'' if members == 1 else 's'}, {elapsed:.0f} s, "
                 f"{exploits} exploit{'' if exploits == 1 else 's'}"]
        lines += ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in [header] + body]
        if len(order) > MAX_ROWS:
            lines.append(f"... and {len(order) - MAX_ROWS} more")
        return [PREFIX + line for line in lines]

    def _draw(self, lines: list[str], table: bool) -> None:
        out, terminal = self._out, self._terminal()
        text = ""
        if terminal and self._drawn and table:
            text += f"\x1b[{self._drawn}F\x1b[J"  # back to the table's first line, cleared
            self._drawn = 0
        text += "".join(line + "\n" for line in lines)
        if table:
            rows = self.table()
            if terminal:  # a wrapped row would take two lines the redraw does not count
                width = max(20, shutil.get_terminal_size((200, 24)).columns - 1)
                rows = [row[:width] for row in rows]
            text += "".join(line + "\n" for line in rows)
            self._drawn = len(rows) if terminal else 0
            self._last_draw = time.monotonic()
        out.write(text)
        out.flush()
