"""Benchmark of the ESG engine: 10,000 Hull-White scenarios x 600 monthly steps on one core.

Run from the repository root:

    OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 PYTHONPATH=worker-py/python \
        .venv/bin/python worker-py/bench/bench_esg.py [--reps 9] [--cpu 0]

It times ``EsgEngine.runChunk`` writing into an output view built beforehand (so only the
engine's work is timed, as in a worker whose shared memory is already mapped), in three shapes:
one chunk of 10,000 scenarios with equity, the same as ten chunks of 1,000 (what a supervisor
with ``chunk_size: 1000`` does), and rates only. A plain numpy reference of the same exact scheme
(``default_rng`` normals, a time loop over scenario vectors, one transposed copy per output) runs
in the same process, on the same core, on the same output arrays, and the ratio is printed.
Medians of ``--reps`` runs, wall clock and process CPU time.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse
import math
import platform
import statistics
import subprocess
import sys
import time

import numpy as np

from livecalc import Chunk, build_view
from livecalc.engines import esg

SCENARIOS = 10_000
CONFIG = {
    "model": "hull_white", "seed": 42, "horizon_years": 50, "steps_per_year": 12,
    "curve": {"spot": [0.01 + 0.03 * (1.0 - math.exp(-n / 10.0)) for n in range(1, 51)]},
    "a": 0.1, "sigma": 0.015, "equity": {"sigma": 0.2, "rho": 0.35},
}


def machine() -> str:
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in text.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return platform.processor() or "unknown"


def timed(fn, reps: int):
    fn()  # warm-up: first-touch of scratch memory, imports, caches
    wall, cpu = [], []
    for _ in range(reps):
        w, c = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - w)
        cpu.append(time.process_time() - c)
    return statistics.median(wall), min(wall), statistics.median(cpu)


def output_views(chunks, points, equity=True):
    views = []
    for index, (start, count) in enumerate(chunks):
        cols = {esg.RATE_COLUMN: np.zeros((count, points)), esg.DF_COLUMN: np.zeros((count, points))}
        if equity:
            cols[esg.EQUITY_COLUMN] = np.zeros((count, points))
        cols[esg.ID_COLUMN] = np.zeros(count, np.int64)
        cols[esg.TIME_COLUMN] = np.zeros(points)
        views.append(build_view(cols, Chunk(index, start, count, SCENARIOS)))
    return views


def reference(settings, plan, out_r, out_d, out_s, seed):
    """Plain numpy, same exact scheme: normals from default_rng, the 3x3 step Cholesky factor,
    a loop over time on vectors of all scenarios, then one transposed copy per output."""
    steps, n = settings.steps, out_r.shape[0]
    z = np.random.default_rng(seed).standard_normal((3, steps, n))
    e = np.einsum("ij,jtn->itn", plan.chol, z)
    phi, b = plan.phi_m1 + 1.0, plan.b
    x = np.zeros((steps + 1, n))
    y = np.zeros((steps + 1, n))
    w = np.zeros((steps + 1, n))
    for j in range(steps):
        np.multiply(x[j], phi, out=x[j + 1])
        x[j + 1] += e[0, j]
        np.multiply(x[j], b, out=y[j + 1])
        y[j + 1] += y[j]
        y[j + 1] += e[1, j]
        np.add(w[j], e[2, j], out=w[j + 1])
    out_r[...] = (x + plan.alpha[:, None]).T
    out_d[...] = np.exp(plan.log_df0[:, None] - y).T
    out_s[...] = np.exp(plan.log_s0[:, None] + y + w).T


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=9)
    ap.add_argument("--cpu", type=int, default=None, help="pin to this CPU (default: the last one)")
    args = ap.parse_args()
    cpu = args.cpu if args.cpu is not None else max(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cpu})

    engine = esg.EsgEngine()
    engine.initialize(CONFIG)
    st = engine.settings
    points = st.steps + 1
    print(f"machine      {machine()}  (pinned to CPU {cpu}, load average {os.getloadavg()[0]:.2f})")
    print(f"software     Python {platform.python_version()}, numpy {np.__version__}, "
          f"threads OMP={os.environ['OMP_NUM_THREADS']} OPENBLAS={os.environ['OPENBLAS_NUM_THREADS']}")
    print(f"workload     {SCENARIOS:,} scenarios x {st.steps} monthly steps, Hull-White + equity, "
          f"{3 * SCENARIOS * points * 8 / 1e6:.0f} MB of output, median of {args.reps}")
    print(f"tuning       BLOCK_SCENARIOS={esg.BLOCK_SCENARIOS}, TILE_STEPS={esg.TILE_STEPS}")

    one = output_views([(0, SCENARIOS)], points)
    ten = output_views([(k * 1000, 1000) for k in range(10)], points)
    rates = output_views([(0, SCENARIOS)], points, equity=False)

    def run_views(views):
        return lambda: [engine.runChunk(None, v) for v in views]

    rows = [
        ("engine, 1 chunk x 10,000", timed(run_views(one), args.reps)),
        ("engine, 10 chunks x 1,000", timed(run_views(ten), args.reps)),
        ("engine, rates only", timed(run_views(rates), args.reps)),
    ]
    cols = esg.outputs(one[0])
    ref = timed(lambda: reference(st, engine._plan, cols[esg.RATE_COLUMN], cols[esg.DF_COLUMN],
                                  cols[esg.EQUITY_COLUMN], 1), args.reps)
    rows.append(("plain numpy reference", ref))

    # The reference must be the same model: E[D(10)] / P(0, 10) is 1 within noise for both
    # (checked at 10 years, where D is far less skewed than at 50).
    p10 = math.exp(float(st.curve.log_discount(np.array(10.0))))
    ref_d = cols[esg.DF_COLUMN][:, 120] / p10
    engine.runChunk(None, one[0])
    eng_d = cols[esg.DF_COLUMN][:, 120] / p10
    for name, d in (("engine", eng_d), ("reference", ref_d)):
        print(f"check        {name:9s} E[D(10)]/P(0,10) = {d.mean():.4f} +- {d.std() / math.sqrt(d.size):.4f}")
    print()
    print(f"{'':28s}{'wall median':>12s}{'wall min':>10s}{'cpu median':>12s}{'steps/s':>12s}")
    for name, (wall, best, cpu_t) in rows:
        rate = SCENARIOS * st.steps / wall
        print(f"{name:28s}{wall * 1e3:10.1f} ms{best * 1e3:8.1f} ms{cpu_t * 1e3:10.1f} ms{rate / 1e6:9.1f} M")
    engine_wall = rows[0][1][0]
    print()
    print(f"target       <= 150 ms for one chunk: {'met' if engine_wall <= 0.15 else 'NOT met'}"
          f" ({engine_wall * 1e3:.1f} ms)")
    print(f"ratio        reference / engine = {ref[0] / engine_wall:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
