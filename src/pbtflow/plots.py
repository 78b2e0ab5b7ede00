"""Pictures of the reference experiments (matplotlib, files only).

- quadratic: each member's (theta0, theta1) path over the contours of the true
  objective Q, with PBT's exploits (the jumps to the donor's theta) labelled
  with their step; Q over time per member; an animated GIF of the paths.
- lr-schedule: each member's learning rate against its accuracy, over the
  triangle-shaped optimal schedule; accuracy over time per member.

The data are Tune's per-trial results (``Result.metrics_dataframe``) and the
exploit events that :class:`pbtflow.pbt.RecordingPBT` records.
"""

from __future__ import annotations

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
LINEAGE = "lineage.png"
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


def members_from(results: Iterable[Any], events: Sequence[Mapping[str, Any]] = ()) -> list[Member]:
    """Members from a Tune ResultGrid (or any iterable of Results), ordered by
    trial id and named "member 0", "member 1", ..."""
    members = []
    for result in results:
        frame = result.metrics_dataframe
        if frame is None or frame.empty:
            continue
        trial_id = str((result.metrics or {}).get("trial_id") or frame["trial_id"].iloc[0])
        rows = {c: frame[c].to_numpy(dtype=float) for c in frame.columns
                if is_numeric_dtype(frame[c]) or is_bool_dtype(frame[c])}
        members.append(Member(trial_id, "", rows))
    members.sort(key=lambda m: m.trial_id)
    for index, member in enumerate(members):
        member.label = f"member {index}"
        member.exploits = _exploit_rows(member, [e for e in events if e["trial_id"] == member.trial_id])
    return members


def _exploit_rows(member: Member, events: Sequence[Mapping[str, Any]]) -> list[tuple[int, str]]:
    """Match each exploit to the last row the member reported before it (the
    row whose training_iteration is the event's step, scanning forwards)."""
    iterations = member.column(names.TRAINING_ITERATION)
    found, start = [], 0
    for event in events:
        step = event.get("step", event.get("time"))
        hits = [i for i in range(start, len(iterations)) if iterations[i] == step]
        if hits:
            found.append((hits[0], str(event["donor_id"])))
            start = hits[0] + 1
    return found


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


def _save(fig, path: Path) -> Path:
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# -- entry used by tuning ---------------------------------------------------------------
def _with_start_h(member: Member) -> Member:
    """The member named with its starting h, for the quadratic's pictures."""
    h0, h1 = (member.column(k)[0] if len(member) else float("nan") for k in ("h0", "h1"))
    return replace(member, label=f"{member.label}: h = ({h0:g}, {h1:g}) at start")


def plot_schedules(members: Sequence[Member], schedules: Mapping[str, Mapping[str, Sequence[float]]],
                   folder: Path, title: str = "") -> list[Path]:
    """Each member's hyperparameters over its reported results (``schedules``:
    trial id -> hyperparameter -> value per step), one panel per
    hyperparameter, exploits marked: the schedule PBT found."""
    def values_of(member: Member, key: str) -> np.ndarray:
        return np.asarray(schedules.get(member.trial_id, {}).get(key, []), dtype=float)

    keys = sorted({k for m in members for k in schedules.get(m.trial_id, {})
                   # constant for everyone: not part of the schedule
                   if len({v for mm in members for v in values_of(mm, k)}) > 1})
    if not keys:
        return []
    folder.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(len(keys), 1, figsize=(8, 1.9 * len(keys) + 0.8), sharex=True,
                             squeeze=False)
    for ax, key in zip(axes[:, 0], keys):
        for index, member in enumerate(members):
            values = values_of(member, key)
            steps = np.arange(len(values))
            color = COLORS[index % len(COLORS)]
            ax.step(steps, values, where="post", color=color, lw=1.4, label=member.label)
            for row, _donor in member.exploits:
                if row < len(values):
                    ax.plot(row, values[row], "o", color=color, ms=5, mfc="white")
        ax.set_ylabel(key)
        every = np.concatenate([values_of(m, key) for m in members])
        every = every[np.isfinite(every)]
        if every.size and every.min() > 0 and every.max() / every.min() > 50:
            ax.set_yscale("log")  # e.g. learning rates spanning decades
        ax.grid(alpha=0.3)
    axes[-1, 0].set_xlabel("member's step (results reported); circles: exploits")
    axes[0, 0].legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    fig.suptitle(f"{title}: hyperparameter schedules" if title else "hyperparameter schedules")
    fig.tight_layout()
    return [_save(fig, folder / HP_SCHEDULE)]


def plot_lineage(members: Sequence[Member], events: Sequence[Mapping[str, Any]], folder: Path,
                 title: str = "") -> list[Path]:
    """Which member copied which, and when: one row per member, an arrow from
    the donor's row to the copier's at each exploit."""
    if not members:
        return []
    folder.mkdir(parents=True, exist_ok=True)
    row_of = {m.trial_id: i for i, m in enumerate(members)}
    fig, ax = plt.subplots(figsize=(8, 0.6 * len(members) + 1.6))
    for index, member in enumerate(members):
        ax.plot([0, len(member)], [index, index], color=COLORS[index % len(COLORS)], lw=3, alpha=0.5)
        for row, donor in member.exploits:
            if donor in row_of:
                ax.annotate("", xy=(row, index), xytext=(row, row_of[donor]),
                            arrowprops={"arrowstyle": "->", "color": COLORS[row_of[donor] % len(COLORS)],
                                        "lw": 1.2})
    ax.set_yticks(range(len(members)), [m.label for m in members])
    ax.set_xlabel("member's step (results reported)")
    ax.set_title(f"{title + ': ' if title else ''}lineage, {len(events)} exploits "
                 "(arrow: donor -> copier)")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return [_save(fig, folder / LINEAGE)]


def write(trainable: str, results: Iterable[Any], events: Sequence[Mapping[str, Any]],
          folder: str | Path, title: str = "",
          schedules: Mapping[str, Mapping[str, Sequence[float]]] | None = None) -> list[Path]:
    """The pictures of a finished experiment, written into ``folder``: every
    experiment's schedules, its lineage when PBT exploited at all, plus the toy
    problems' own pictures."""
    folder = Path(folder)
    results = list(results)
    paths: list[Path] = []
    members = members_from(results, events)
    if trainable == "quadratic":
        paths += plot_quadratic([_with_start_h(m) for m in members], folder, title)
    elif trainable == "lr-schedule":
        paths += plot_lr_schedule(members, folder, title)
    paths += plot_schedules(members, schedules or {}, folder, title)
    if events:  # a baseline (or a PBT run that never exploited) has no lineage to draw
        paths += plot_lineage(members, events, folder, title)
    return paths
