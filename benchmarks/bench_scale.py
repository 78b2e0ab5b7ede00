"""Does pbtflow's driver keep up as the population grows? Ray's own
``ray.tune.examples.pbt_function:pbt_function``, a fixed number of iterations
per member (60), perturbation interval 5, no early stop, at 8, 32 and 128
members, each side in a fresh process (Ray start-up included):

- ``expert``: plain Ray with ``reuse_actors=True``, every checkpoint kept and
  Tune's CSV logger only (see bench_expert.py);
- ``pbtflow``: ``pbtflow.tune`` with MLflow on a SQLite store;
- ``pbtflow-nomlflow``: the same with the metric rows dropped instead of
  written (what the MLflow writes cost, all else equal).

Prints wall time, results per second, the ratio to the expert side, the
driver's seconds per pbtflow component and the time ``pbtflow report`` takes
on the 128-member record (its SQLite store, then the same store behind an
``mlflow server``).

    python benchmarks/bench_scale.py [--members 8,32,128] [--iters 60] [--rounds 1]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time

import bench_expert

SIDES = ("expert", "pbtflow", "pbtflow-nomlflow")


def side_main(side: str, members: int, iters: int, keep: str | None) -> None:
    tmp = keep or tempfile.mkdtemp()
    os.chdir(tmp)  # MLflow keeps a SQLite store's artifacts in ./mlruns
    if side == "expert":
        out = bench_expert.run_plain("expert", tmp, 0, population=members, max_iters=iters,
                                     until_done=False)
    else:
        out = bench_expert.run_pbtflow(tmp, 0, population=members, max_iters=iters, until_done=False,
                                       mlflow=side == "pbtflow")
    print("RESULT " + json.dumps(out), flush=True)


def run_side(side: str, members: int, iters: int, keep: str | None = None) -> dict:
    command = [sys.executable, __file__, "--side", side, "--members", str(members), "--iters", str(iters)]
    if keep:
        command += ["--keep", keep]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=3600)
    if proc.returncode != 0 or "RESULT " not in proc.stdout:
        raise RuntimeError(f"{side} at {members} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.split("RESULT ", 1)[1].splitlines()[0])


def time_report(folder: str) -> dict:
    """Seconds `pbtflow report` takes on the kept record: the SQLite store,
    then the same store served by `mlflow server`."""
    uri = f"sqlite:///{folder}/mlflow.db"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}

    def report(tracking_uri: str) -> float:
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "pbtflow.cli", "report", "--tracking-uri",
                               tracking_uri, "--experiment", "bench-expert"],
                              cwd=folder, env=env, capture_output=True, text=True, timeout=600)
        if proc.returncode != 0:
            raise RuntimeError(proc.stderr[-2000:])
        return time.perf_counter() - start

    out = {"sqlite": report(uri)}
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1",
                               "--port", str(port), "--backend-store-uri", uri, "--workers", "1"],
                              cwd=folder, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.5)
        out["server"] = report(f"http://127.0.0.1:{port}")
    finally:
        server.terminate()
        server.wait(timeout=60)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--members", default="8,32,128")
    parser.add_argument("--iters", type=int, default=60)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--sides", default=",".join(SIDES))
    parser.add_argument("--side", help=argparse.SUPPRESS)
    parser.add_argument("--keep", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side:
        side_main(args.side, int(args.members), args.iters, args.keep)
        return
    sizes = [int(m) for m in args.members.split(",")]
    sides = args.sides.split(",")
    runs = {(s, m): [] for s in sides for m in sizes}
    report_times = None
    for m in sizes:
        for r in range(args.rounds):
            for side in (sides if r % 2 == 0 else sides[::-1]):
                keep = None
                if side == "pbtflow" and m == max(sizes) and r == 0:
                    keep = tempfile.mkdtemp()
                out = run_side(side, m, args.iters, keep)
                runs[side, m].append(out)
                check = f", record check: {out['record_check']}" if "record_check" in out else ""
                print(f"{m} members, round {r}: {side}: {out['wall']:.1f} s, {out['results']} results, "
                      f"{out['errors']} errored{check}", flush=True)
                if keep:
                    report_times = time_report(keep)
                    print(f"pbtflow report on {m} members: {report_times}", flush=True)

    print(f"\nRay's pbt_function, {args.iters} iterations per member, perturbation interval "
          f"{bench_expert.INTERVAL}, 2 CPUs, median of {args.rounds} round(s)\n")
    print("| members | " + " | ".join(f"{s}: wall s (results/s)" for s in sides) + " | "
          + " | ".join(f"{s} / expert" for s in sides if s != "expert") + " |")
    print("|---:|" + "---:|" * (2 * len(sides) - 1))
    for m in sizes:
        wall = {s: statistics.median(o["wall"] for o in runs[s, m]) for s in sides}
        rate = {s: statistics.median(o["results"] / o["wall"] for o in runs[s, m]) for s in sides}
        ratios = " | ".join(f"{wall[s] / wall['expert']:.2f}x" for s in sides if s != "expert")
        print(f"| {m} | " + " | ".join(f"{wall[s]:.1f} ({rate[s]:.0f})" for s in sides)
              + f" | {ratios} |")
    for side in (s for s in sides if s.startswith("pbtflow")):
        print(f"\n{side}: the driver's seconds per component (ms per result in brackets)\n")
        labels = sorted({k for m in sizes for o in runs[side, m] for k in o["seconds"]})
        print("| component | " + " | ".join(f"{m} members" for m in sizes) + " |")
        print("|---|" + "---:|" * len(sizes))
        for label in labels:
            cells = []
            for m in sizes:
                secs = statistics.median(o["seconds"].get(label, 0.0) for o in runs[side, m])
                rows = statistics.median(o["results"] for o in runs[side, m])
                cells.append(f"{secs:.2f} ({1000 * secs / max(rows, 1):.2f})")
            print(f"| {label} | " + " | ".join(cells) + " |")
    if report_times:
        print(f"\n`pbtflow report` on the {max(sizes)}-member record: {report_times['sqlite']:.1f} s "
              f"on SQLite, {report_times['server']:.1f} s through `mlflow server`")


if __name__ == "__main__":
    main()
