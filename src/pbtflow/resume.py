"""What pbtflow keeps beside Tune's own state so that an interrupted
experiment can be resumed: its settings, its MLflow parent run and its folder,
in a versioned JSON file a person can read. A setting added to pbtflow later
takes its default when an older experiment resumes; one pbtflow no longer has
is dropped."""

from __future__ import annotations

import base64
import dataclasses
import json
from pathlib import Path
from typing import Any

from ray import cloudpickle

from pbtflow.experiment import Experiment, SettingError

STATE_FILE = "pbtflow_state.json"
VERSION = 1
_PICKLED = "pickled"  # a value JSON cannot hold (a Python object in a search space), base64


def save(experiment: Experiment, parent_run_id: str, path: Path) -> None:
    """Write the resume state of ``experiment`` into its folder ``path``."""
    state = {"version": VERSION, "parent_run_id": parent_run_id, "path": str(path),
             "settings": {key: _plain(value) for key, value in experiment.to_dict().items()}}
    (path / STATE_FILE).write_text(json.dumps(state, indent=2) + "\n")


def load(path: str) -> dict[str, Any]:
    """``{"experiment", "parent_run_id", "path"}`` of the interrupted
    experiment in folder ``path``."""
    state_file = Path(path).expanduser() / STATE_FILE
    if not state_file.is_file():
        raise SettingError(f"resume: {path!r} is not an interrupted pbtflow experiment (no "
                           f"{STATE_FILE}); pass the folder printed when it stopped.")
    try:
        state = json.loads(state_file.read_text())
        version = state["version"]
    except (ValueError, KeyError, TypeError) as exc:
        raise SettingError(f"resume: {str(state_file)!r} is not a pbtflow resume state ({exc}); pass "
                           "the folder printed when the experiment stopped.") from None
    if version > VERSION:
        raise SettingError(f"resume: {str(state_file)!r} was written by a newer pbtflow (state "
                           f"version {version}, this one reads {VERSION}); resume with that pbtflow.")
    known = {f.name for f in dataclasses.fields(Experiment)}
    settings = {k: _value(v) for k, v in state["settings"].items() if k in known}
    return {"experiment": Experiment(**settings), "parent_run_id": state["parent_run_id"],
            "path": state["path"]}


def _plain(value: Any) -> Any:
    """``value`` as JSON, exactly: a tuple stays a tuple only through
    ``_value``, and what JSON cannot hold is pickled."""
    if isinstance(value, tuple):
        return {"tuple": [_plain(v) for v in value]}
    if isinstance(value, dict) and all(isinstance(k, str) for k in value) and \
            not ({"tuple", _PICKLED} & value.keys() and len(value) == 1):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return {_PICKLED: base64.b64encode(cloudpickle.dumps(value)).decode("ascii")}


def _value(plain: Any) -> Any:
    if isinstance(plain, dict):
        if set(plain) == {"tuple"}:
            return tuple(_value(v) for v in plain["tuple"])
        if set(plain) == {_PICKLED}:
            return cloudpickle.loads(base64.b64decode(plain[_PICKLED]))
        return {k: _value(v) for k, v in plain.items()}
    if isinstance(plain, list):
        return [_value(v) for v in plain]
    return plain
