"""Pictures of an experiment (matplotlib, files only).

- every experiment: each member's schedule, one panel per mutated
  hyperparameter (``hp_schedule.png``), and who copied whom when
  (``lineage.png``), drawn from the record itself (the ``hp/*`` rows and
  ``lineage.json``); the data each draws is saved beside it as JSON;
- quadratic: each member's (theta0, theta1) path over the contours of the true
  objective Q, with PBT's exploits (the jumps to the donor's theta) labelled
  with their step; Q over time per member; an animated GIF of the paths.
- lr-schedule: each member's learning rate against its accuracy, over the
  triangle-shaped optimal schedule; accuracy over time per member.

The toy pictures' data are Tune's per-trial results (``Result.metrics_dataframe``)
and the exploits of ``lineage.json``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import matplotlib

matplotlib.use("Agg")  # files only: no display needed, safe in Ray workers and CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402
from pandas.api.types import is_bool_dtype, is_numeric_dtype  # noqa: E402

from pbtflow import names  # noqa: E402

QUADRATIC_PATHS = "quadratic_paths.png"
QUADRATIC_Q = "quadratic_q.png"
QUADRATIC_GIF = "quadratic_paths.gif"
LR_SCHEDULE = "lr_schedule.png"
HP_SCHEDULE = "hp_schedule.png"
HP_SCHEDULE_DATA = "hp_schedule.json"  # key -> trial id -> [steps, values]
LINEAGE = "lineage.png"
LINEAGE_DATA = "lineage_arrows.json"  # [donor, copier, copier's step] per exploit
COLORS = ["black", "tab:red", "tab:blue", "tab:green", "tab:orange", "tab:purple",
          "tab:brown", "tab:pink", "tab:olive", "tab:cyan"]


@dataclass
class Member:
    """One trial's reported rows, in report order, and where it exploited."""

    trial_id: str
    label: str
    rows: dict[str, np.ndarray]  # column -> values, one per reported result
    exploits: list[tuple[int, str]] = field(default_factory=list)  # (row index, donor id)

    def column(self, key: str) -> np.ndarray:
        return self.rows.get(key, np.full(len(self), np.nan))

    def __len__(self) -> int:
        return len(self.rows.get(names.TRAINING_ITERATION, []))


def members_from(results: Iterable[Any], lineage_record: Mapping[str, Any] | None = None) -> list[Member]:
    """Members from a Tune ResultGrid (or any iterable of Results), ordered and
    labelled by trial id, with their exploits from the lineage record (the
    member's step it exploited after, and the donor)."""
    members = []
    for result in results:
        frame = result.metrics_dataframe
        if frame is None or frame.empty:
            continue
        # its own rows name it; a trial stopped right after an exploit carries
        # its donor's last metrics (and trial id) in result.metrics
        trial_id = str(frame["trial_id"].iloc[-1])
        rows = {c: frame[c].to_numpy(dtype=float) for c in frame.columns
                if is_numeric_dtype(frame[c]) or is_bool_dtype(frame[c])}
        members.append(Member(trial_id, trial_id, rows))
    members.sort(key=lambda m: m.trial_id)
    for member in members:
        member.exploits = [(e["member_step"], str(e["donor"])) for e in
                           (lineage_record or {}).get(member.trial_id, {}).get("exploits", [])
                           if e.get("member_step") is not None]
    return members


# -- quadratic --------------------------------------------------------------------------
def _q_contours(ax, limit: float = 1.0) -> None:
    from pbtflow.trainables.quadratic import Q_MAX, SCALE

    grid = np.linspace(-0.1, limit, 200)
    t0, t1 = np.meshgrid(grid, grid)
    q = Q_MAX - (SCALE[0] * t0 ** 2 + SCALE[1] * t1 ** 2)
    levels = np.round(np.linspace(q.min(), Q_MAX, 9), 2)
    contour = ax.contour(t0, t1, q, levels=levels, colors="0.75", linewidths=0.8)
    ax.clabel(contour, fmt="Q=%.2f", fontsize=7)
    ax.plot([0], [0], marker="*", color="gold", markersize=14, markeredgecolor="black",
            linestyle="none", label=f"optimum: theta = (0, 0), Q = {Q_MAX}")


def _draw_paths(ax, members: Sequence[Member], upto: int | None, label_exploits: bool) -> None:
    from pbtflow.trainables.quadratic import THETA_START

    ax.plot(*THETA_START, marker="o", color="0.3", markersize=7, linestyle="none",
            label=f"start theta = {THETA_START}")
    placed: list[np.ndarray] = []
    for i, member in enumerate(members):
        color = COLORS[i % len(COLORS)]
        n = len(member) if upto is None else min(upto, len(member))
        x = np.r_[THETA_START[0], member.column("theta0")[:n]]
        y = np.r_[THETA_START[1], member.column("theta1")[:n]]
        jumps = {row + 1 for row, _ in member.exploits if row + 1 < n}  # x/y index after the jump
        start = 0
        for cut in sorted(jumps) + [len(x) - 1]:
            ax.plot(x[start:cut + 1], y[start:cut + 1], "-", color=color, linewidth=1.2,
                    alpha=0.9, label=member.label if start == 0 else None)
            start = cut + 1
            if cut + 1 < len(x):  # the exploit: copy the donor's theta, then step
                ax.annotate("", xy=(x[cut + 1], y[cut + 1]), xytext=(x[cut], y[cut]),
                            arrowprops=dict(arrowstyle="->", linestyle="--", color=color, lw=1))
        ax.scatter(x[1:], y[1:], s=10, color=color, zorder=3)
        if label_exploits:  # the step of each visible jump, without piling labels up
            for row, _ in member.exploits:
                if row + 1 >= n:
                    continue
                here = np.array([x[row + 2], y[row + 2]])
                jump = np.hypot(x[row + 2] - x[row + 1], y[row + 2] - y[row + 1])
                if jump < 0.02 or any(np.hypot(*(here - p)) < 0.06 for p in placed):
                    continue
                placed.append(here)
                step = int(member.column(names.TRAINING_ITERATION)[row])
                ax.annotate(f"{step}", here, textcoords="offset points", xytext=(5, 3),
                            fontsize=8, color=color)
    if any(m.exploits for m in members):
        ax.plot([], [], "--", color="0.4", label="exploit: copy the donor's theta, explore h (label: step)")


def plot_quadratic(members: Sequence[Member], folder: Path, title: str = "") -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    from pbtflow.trainables.quadratic import Q_MAX

    paths = []
    fig, ax = plt.subplots(figsize=(7, 6.2))
    _q_contours(ax)
    _draw_paths(ax, members, None, label_exploits=True)
    ax.set(xlabel="theta0", ylabel="theta1", xlim=(-0.1, 1.0), ylim=(-0.1, 1.0),
           title=title or "quadratic: parameter paths over Q contours")
    ax.set_aspect("equal")
    ax.legend(loc="upper left", fontsize=8, framealpha=0.9, markerscale=0.7)
    fig.tight_layout()
    paths.append(_save(fig, folder / QUADRATIC_PATHS))

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, member in enumerate(members):
        color = COLORS[i % len(COLORS)]
        steps = np.arange(1, len(member) + 1)
        ax.plot(steps, member.column(names.Q), color=color, label=member.label)
        rows = [r for r, _ in member.exploits]
        if rows:
            ax.plot(steps[rows], member.column(names.Q)[rows], "v", color=color, markersize=6)
    if any(m.exploits for m in members):
        ax.plot([], [], "v", color="0.4", label="exploit: copies the other member after this step")
    ax.axhline(Q_MAX, color="gold", linestyle="--", label=f"optimum Q = {Q_MAX}")
    ax.set(xlabel="step (training iteration)", ylabel="Q(theta) (true objective)",
           title=(title or "quadratic") + ": Q over time per member")
    ax.set_ylim(top=Q_MAX + 0.05)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    paths.append(_save(fig, folder / QUADRATIC_Q))

    paths.append(animate_quadratic(members, folder / QUADRATIC_GIF, title))
    return paths


def _path_arrays(member: Member, upto: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x, y) of the member's path up to ``upto`` rows, broken (NaN) at exploits,
    and (x, y) of the exploit jumps as NaN-separated segments."""
    from pbtflow.trainables.quadratic import THETA_START

    x = np.r_[THETA_START[0], member.column("theta0")[:upto]]
    y = np.r_[THETA_START[1], member.column("theta1")[:upto]]
    px, py, jx, jy = list(x), list(y), [], []
    for row, _ in sorted(member.exploits, reverse=True):
        if row + 2 < len(x):  # break the path between row and row + 1 (x index + 1)
            px.insert(row + 2, np.nan)
            py.insert(row + 2, np.nan)
            jx += [x[row + 1], x[row + 2], np.nan]
            jy += [y[row + 1], y[row + 2], np.nan]
    return np.array(px), np.array(py), np.array(jx), np.array(jy)


def animate_quadratic(members: Sequence[Member], path: Path, title: str = "",
                      fps: int = 10) -> Path:
    """A GIF of the paths growing step by step (the background is drawn once)."""
    frames = max((len(m) for m in members), default=0)
    fig, ax = plt.subplots(figsize=(5.5, 5), dpi=72)
    _q_contours(ax)
    from pbtflow.trainables.quadratic import THETA_START

    ax.plot(*THETA_START, marker="o", color="0.3", markersize=7, linestyle="none", label="start")
    artists = []
    for i, member in enumerate(members):
        color = COLORS[i % len(COLORS)]
        line, = ax.plot([], [], "-o", color=color, markersize=2.5, linewidth=1.2, label=member.label)
        jump, = ax.plot([], [], "--", color=color, linewidth=1)
        artists.append((member, line, jump))
    ax.plot([], [], "--", color="0.4", label="exploit (copy donor)")
    ax.set(xlabel="theta0", ylabel="theta1", xlim=(-0.1, 1.0), ylim=(-0.1, 1.0))
    ax.set_aspect("equal")
    ax.legend(loc="upper left", fontsize=7, framealpha=0.9, markerscale=0.7)
    heading = ax.set_title(" ")

    # Blitting: draw the static background once, then only the moving artists
    # (redrawing contours, ticks and legend 100 times takes ~20 s on 2 cores).
    moving = [a for _, line, jump in artists for a in (line, jump)] + [heading]
    for artist in moving:
        artist.set_animated(True)
    fig.canvas.draw()
    background = fig.canvas.copy_from_bbox(fig.bbox)
    images = []
    for frame in range(frames):
        fig.canvas.restore_region(background)
        for member, line, jump in artists:
            px, py, jx, jy = _path_arrays(member, frame + 1)
            line.set_data(px, py)
            jump.set_data(jx, jy)
        heading.set_text(f"{title or 'quadratic'}: step {frame + 1}")
        for artist in moving:
            fig.draw_artist(artist)
        rgba = np.asarray(fig.canvas.buffer_rgba())
        images.append(Image.fromarray(rgba[..., :3].copy()).convert("P", palette=Image.ADAPTIVE))
    plt.close(fig)
    if images:
        images[0].save(path, save_all=True, append_images=images[1:], loop=0,
                       duration=[1000 // fps] * (len(images) - 1) + [2000])
    return path


# -- lr-schedule ------------------------------------------------------------------------
def plot_lr_schedule(members: Sequence[Member], folder: Path, title: str = "") -> list[Path]:
    from pbtflow.trainables.lr_schedule import Q_TOLERANCE, TARGET, optimal_lr

    folder.mkdir(parents=True, exist_ok=True)
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5), gridspec_kw=dict(width_ratios=[1.3, 1]))
    accuracy = np.linspace(0, TARGET, 401)
    best = np.array([optimal_lr(a) for a in accuracy])
    left.fill_between(accuracy, best / Q_TOLERANCE, best * Q_TOLERANCE, color="gold", alpha=0.25,
                      label=f"lr within x{Q_TOLERANCE:g} of optimal (accuracy grows)")
    left.plot(accuracy, best, "--", color="black", linewidth=2, label="optimal lr (triangle)")
    for i, member in enumerate(members):
        color = COLORS[i % len(COLORS)]
        left.plot(member.column(names.MEAN_ACCURACY), member.column("cur_lr"), "-", color=color,
                  linewidth=1, alpha=0.8, marker=".", markersize=3, label=member.label)
        steps = np.arange(1, len(member) + 1)
        right.plot(steps, member.column(names.MEAN_ACCURACY), color=color, linewidth=1,
                   label=member.label)
        rows = [r for r, _ in member.exploits]
        if rows:
            right.plot(steps[rows], member.column(names.MEAN_ACCURACY)[rows], "v", color=color,
                       markersize=4)
    left.set_yscale("log")
    left.set(xlabel="accuracy", ylabel="learning rate (log scale)", xlim=(0, TARGET * 1.05),
             title=(title or "lr-schedule") + ": each member's lr vs. accuracy")
    left.grid(alpha=0.3, which="both")
    left.legend(loc="lower center", fontsize=7, ncol=2, framealpha=0.9)
    right.axhline(TARGET, color="gold", linestyle="--", label=f"done: accuracy > {TARGET:g}")
    if any(m.exploits for m in members):
        right.plot([], [], "v", color="0.4", label="exploit")
    right.set(xlabel="step of the member (reports so far)", ylabel="accuracy",
              title="accuracy over time per member")
    right.grid(alpha=0.3)
    right.legend(loc="upper left", fontsize=7)
    fig.tight_layout()
    return [_save(fig, folder / LR_SCHEDULE)]


def _save_data(data: Any, path: Path) -> Path:
    """What a picture draws, beside it, so that it can be checked and reused."""
    path.write_text(json.dumps(data, indent=1))
    return path


def _save(fig, path: Path) -> Path:
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# -- entry used by tuning ---------------------------------------------------------------
def _with_start_h(member: Member) -> Member:
    """The member named with its starting h, for the quadratic's pictures."""
    h0, h1 = (member.column(k)[0] if len(member) else float("nan") for k in ("h0", "h1"))
    return replace(member, label=f"{member.label}: h = ({h0:g}, {h1:g}) at start")


def schedule_series(schedules: Mapping[str, Mapping[str, Sequence[tuple[int, float]]]],
                    mutated: Sequence[str]) -> dict[str, dict[str, tuple[list[int], list[float]]]]:
    """What ``hp_schedule.png`` draws: for every mutated hyperparameter with
    numeric values, each member's (steps, values), the same rows as its
    ``hp/<name>`` metric (``schedules``: trial id -> name -> [(step, value)])."""
    series: dict[str, dict[str, tuple[list[int], list[float]]]] = {}
    for key in mutated:
        per_member = {tid: ([int(s) for s, _ in rows], [float(v) for _, v in rows])
                      for tid in sorted(schedules) if (rows := schedules[tid].get(key))}
        if per_member:
            series[key] = per_member
    return series


def lineage_arrows(lineage_record: Mapping[str, Any]) -> list[tuple[str, str, int]]:
    """What ``lineage.png`` draws: one (donor, copier, copier's step) per
    exploit in ``lineage.json``, the step being the copier's last step before
    it trained on the donor's checkpoint."""
    return sorted((str(e["donor"]), tid, int(e["member_step"]))
                  for tid, entry in lineage_record.items() for e in entry.get("exploits", [])
                  if e.get("member_step") is not None)


def plot_schedules(series: Mapping[str, Mapping[str, tuple[list[int], list[float]]]],
                   arrows: Sequence[tuple[str, str, int]], folder: Path, title: str = "") -> list[Path]:
    """Each member's hyperparameters over its steps, one panel per mutated
    hyperparameter, exploits circled (the member trains on the new value from
    the next step): the schedule PBT found."""
    if not series:
        return []
    members = sorted({tid for per_member in series.values() for tid in per_member})
    color = {tid: COLORS[i % len(COLORS)] for i, tid in enumerate(members)}
    folder.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(len(series), 1, figsize=(9, 1.9 * len(series) + 0.9), sharex=True,
                             squeeze=False)
    for ax, (key, per_member) in zip(axes[:, 0], series.items()):
        for tid, (steps, values) in per_member.items():
            ax.step(steps, values, where="post", color=color[tid], lw=1.4, label=tid)
            at = dict(zip(steps, values))
            for _donor, copier, step in arrows:
                if copier == tid and step in at:
                    ax.plot(step, at[step], "o", color=color[tid], ms=5, mfc="white")
        ax.set_ylabel(key)
        every = np.array([v for _, values in per_member.values() for v in values], dtype=float)
        every = every[np.isfinite(every)]
        if every.size and every.min() > 0 and every.max() / every.min() > 50:
            ax.set_yscale("log")  # e.g. learning rates spanning decades
        ax.grid(alpha=0.3)
    axes[-1, 0].set_xlabel("member's step (results reported); circles: exploits")
    axes[0, 0].legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    fig.suptitle(f"{title}: hyperparameter schedules" if title else "hyperparameter schedules")
    fig.tight_layout()
    return [_save(fig, folder / HP_SCHEDULE), _save_data(series, folder / HP_SCHEDULE_DATA)]


def plot_lineage(arrows: Sequence[tuple[str, str, int]], steps: Mapping[str, int], folder: Path,
                 title: str = "") -> list[Path]:
    """Which member copied which, and when: one row per member (trial id), an
    arrow from the donor's row to the copier's at the copier's step."""
    members = sorted(set(steps) | {a for a, _, _ in arrows} | {b for _, b, _ in arrows})
    if not members:
        return []
    folder.mkdir(parents=True, exist_ok=True)
    row_of = {tid: i for i, tid in enumerate(members)}
    # Rows of 0.6 in up to 32 members; a larger population shares those 19 in
    # (128 members made a 79 in, 8,600-pixel picture that took 1.6 s to draw).
    row = 0.6 * min(1.0, 32 / len(members))
    fig, ax = plt.subplots(figsize=(9, row * len(members) + 1.6))
    for tid, index in row_of.items():
        ax.plot([0, max(0, steps.get(tid, 1) - 1)], [index, index],
                color=COLORS[index % len(COLORS)], lw=3, alpha=0.5)
    for donor, copier, step in arrows:
        ax.annotate("", xy=(step, row_of[copier]), xytext=(step, row_of[donor]),
                    arrowprops={"arrowstyle": "->", "color": COLORS[row_of[donor] % len(COLORS)],
                                "lw": 1.2})
    ax.set_yticks(range(len(members)), members, fontsize=min(10.0, max(4.0, 36 * row)))
    ax.set_ylim(-0.5, len(members) - 0.5)
    ax.set_xlabel("copier's step (results reported)")
    ax.set_title(f"{title + ': ' if title else ''}lineage, {len(arrows)} exploits "
                 "(arrow: donor -> copier)")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return [_save(fig, folder / LINEAGE), _save_data(arrows, folder / LINEAGE_DATA)]


def write(trainable: str, results: Iterable[Any], lineage_record: Mapping[str, Any],
          schedules: Mapping[str, Mapping[str, Sequence[tuple[int, float]]]],
          mutated: Sequence[str], folder: str | Path, title: str = "") -> list[Path]:
    """The pictures of a finished experiment, written into ``folder``: every
    experiment's schedules, its lineage when PBT exploited at all, plus the toy
    problems' own pictures. The schedules and lineage are drawn from the
    record (``hp/*`` rows and ``lineage.json``), nothing else."""
    folder = Path(folder)
    paths: list[Path] = []
    if trainable in ("quadratic", "lr-schedule"):
        members = members_from(results, lineage_record)
        if trainable == "quadratic":
            paths += plot_quadratic([_with_start_h(m) for m in members], folder, title)
        else:
            paths += plot_lr_schedule(members, folder, title)
    arrows = lineage_arrows(lineage_record)
    paths += plot_schedules(schedule_series(schedules, mutated), arrows, folder, title)
    if arrows:  # a baseline (or a PBT run that never exploited) has no lineage to draw
        steps = {tid: max((len(rows) for rows in history.values()), default=0)
                 for tid, history in schedules.items()}
        paths += plot_lineage(arrows, steps, folder, title)
    return paths
