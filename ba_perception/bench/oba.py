"""`ba-perception bench oba`: batched object-BA solve time, speed-up over pycolmap, and agreement with Ceres.

Problems are synthetic (data/oba_problems.py): car-sized boxes with points on their faces, seen
from a driving camera, 1 px noise. Four measurements:

1. the batched LM (``tracklets x frames x points``, fixed iterations, no host sync, Cauchy
   loss, detector prior + constant-velocity prior) on CUDA when present and on the CPU
   (``--cpu-tracklets`` problems there, since the CPU is slow), p50/p90 over ``--repeats``;
2. pure-reprojection versions of the same problems (gauge: two frames held) solved by our
   solver and by pycolmap's Ceres bundle adjuster one after another (same iteration cap);
3. agreement: ``--check`` random problems solved to convergence by both; max relative
   difference of the final costs (the bar is 1e-6);
4. ``refine_tracklets`` end to end on the same number of tracklets (float32).

Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ba_perception.bench.oba_reference import have_pycolmap, solve_with_pycolmap
from ba_perception.core.oba.cuda_graph import CapturedSolve
from ba_perception.core.oba.refine import refine_tracklets
from ba_perception.core.oba.refine_config import RefineConfig
from ba_perception.core.oba.solver import OBAProblem, OBAState, SolverOptions, solve
from ba_perception.data.oba_problems import make_batch, make_tracklets
from ba_perception.eval.results import machine_info


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``bench oba`` options to the subcommand's parser."""
    parser.add_argument("--tracklets", type=int, default=64, help="problems per batch on CUDA")
    parser.add_argument("--cpu-tracklets", type=int, default=16, help="problems per batch on the CPU")
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--points", type=int, default=32)
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=20, help="timed solves per configuration")
    parser.add_argument("--dtype", choices=("float32", "float64", "both"), default="both")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (1: OpenMP spin-waits hurt on a loaded 2-core machine); Ceres uses 1")
    parser.add_argument("--check", type=int, default=20, help="problems for the Ceres agreement check (0: skip)")
    parser.add_argument("--no-cuda", action="store_true", help="skip CUDA even when present")
    parser.add_argument("--compile", action="store_true",
                        help="also time float32 CUDA-graph solves with the LM iteration fused by torch.compile (compiles first: ~1 min)")
    parser.add_argument("--profile", action="store_true",
                        help="also write torch.profiler's kernel table of one eager float32 prior+motion solve (beside --out)")
    parser.add_argument("--out", default="out/bench/oba.json", help="JSON output path")


def _problem(B: int, F: int, K: int, seed: int, dtype: torch.dtype, full: bool) -> tuple[OBAProblem, OBAState]:
    if full:
        sb = make_batch(B, F, K, seed=seed, noise_px=1.0, with_prior=True, dtype=torch.float64)
        sb.problem.motion_sqrt_info = torch.tensor([1 / 3.0] * 3 + [1.0] * 3, dtype=torch.float64).expand(B, 6).clone()
    else:
        sb = make_batch(B, F, K, seed=seed, noise_px=1.0, with_prior=False, fixed_frames=(0, 1), dtype=torch.float64)
    return sb.problem, sb.init


def _time_solve(problem: OBAProblem, init: OBAState, options: SolverOptions, device: str, dtype: torch.dtype, repeats: int,
                graph: bool = False) -> dict:
    p = problem.to(device=device, dtype=dtype)
    st = type(init)(*(x.to(device=device, dtype=dtype) for x in (init.R_odom_obj, init.t_odom_obj, init.points_obj)))
    cuda = device.startswith("cuda")
    if graph:  # the same solve replayed from a CUDA graph (inputs copied in on every call)
        captured = CapturedSolve(p, st, options)

        def solve_fn(p_, st_, _options):
            return captured(p_, st_)
    else:
        solve_fn = solve
    for _ in range(2):  # warm-up (allocator, kernels)
        solve_fn(p, st, options)
    if cuda:
        torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        res = solve_fn(p, st, options)
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    ms = sorted(1e3 * t for t in times)
    return {
        "p50_ms": statistics.median(ms), "p90_ms": ms[int(0.9 * (len(ms) - 1))], "min_ms": ms[0],
        "iterations": int(res.iterations.max()), "final_cost_sum": float(torch.nansum(res.cost)),
        "cuda_graph": graph,
    }


def _write_profile(device: str, args: argparse.Namespace, F: int, K: int, options: SolverOptions) -> None:
    """torch.profiler table (self time per op/kernel) of one eager float32 prior+motion solve."""
    from torch.profiler import ProfilerActivity, profile

    B = args.tracklets if device == "cuda" else args.cpu_tracklets
    problem, init = _problem(B, F, K, seed=1, dtype=torch.float64, full=True)
    p = problem.to(device=device, dtype=torch.float32)
    st = type(init)(*(x.to(device=device, dtype=torch.float32) for x in (init.R_odom_obj, init.t_odom_obj, init.points_obj)))
    solve(p, st, options)
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    with profile(activities=acts) as prof:
        solve(p, st, options)
        if device == "cuda":
            torch.cuda.synchronize()
    key = "self_cuda_time_total" if device == "cuda" else "self_cpu_time_total"
    table = prof.key_averages().table(sort_by=key, row_limit=40)
    kernels = sum(1 for e in prof.events() if e.device_type.name == "CUDA") if device == "cuda" else None
    path = Path(args.out).with_suffix(".profile.txt")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"{device} float32 prior+motion B={B} F={F} K={K} iterations={options.max_iterations}; "
                    f"GPU kernels launched: {kernels}\n{table}\n")
    print(f"  profile ({device}, {kernels} GPU kernels per solve) -> {path}", flush=True)


def count_solve_ops(problem: OBAProblem, init: OBAState, options: SolverOptions) -> int:
    """Non-view aten ops one solve dispatches (on CUDA eager, about one kernel launch each).

    That is the number a CUDA graph still replays kernel by kernel, so it is what fusion has to cut.
    Any device.
    """
    from torch.utils._python_dispatch import TorchDispatchMode

    class _Count(TorchDispatchMode):
        n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if not func.is_view and func.__name__ not in ("empty.memory_format", "empty_strided.default", "_unsafe_view.default"):
                _Count.n += 1
            return func(*args, **(kwargs or {}))

    with _Count():
        solve(problem, init, options)
    return _Count.n


def _solver_rows(args: argparse.Namespace, devices: list[str], timed: SolverOptions) -> list[dict]:
    """Measurement 1 and our half of 2: timed solves per device, problem kind, dtype and CUDA variant."""
    F, K = args.frames, args.points
    dtypes = {"float32": [torch.float32], "float64": [torch.float64], "both": [torch.float32, torch.float64]}[args.dtype]
    rows: list[dict] = []
    for device in devices:
        B = args.cpu_tracklets if device == "cpu" else args.tracklets
        for full in (True, False):
            problem, init = _problem(B, F, K, seed=1, dtype=torch.float64, full=full)
            for dt in dtypes:
                variants = [(False, False)]
                if device == "cuda":
                    variants += [(True, False)] + ([(True, True)] if args.compile and dt == torch.float32 else [])
                for graph, compiled in variants:
                    opts = replace(timed, compiled=compiled)
                    t0 = time.perf_counter()
                    r = _time_solve(problem, init, opts, device, dt, args.repeats, graph)
                    r.update(device=device, dtype=str(dt).replace("torch.", ""), tracklets=B, frames=F, points=K,
                             problem="prior+motion" if full else "reprojection", compiled=compiled,
                             setup_s=time.perf_counter() - t0)
                    rows.append(r)
                    print(f"  solved {device}{'+graph' if graph else ''}{'+compiled' if compiled else ''} {r['dtype']} "
                          f"{r['problem']}: p50 {r['p50_ms']:.2f} ms", flush=True)
    return rows


def _refine_rows(args: argparse.Namespace, devices: list[str]) -> list[dict]:
    """Measurement 4: ``refine_tracklets`` end to end (packing, matching, the solve, the static test, boxes)."""
    F, K, it = args.frames, args.points, args.iterations
    refine_rows = []
    for device in devices:
        B = args.cpu_tracklets if device == "cpu" else args.tracklets
        sb = make_batch(B, F, K, seed=3, noise_px=1.0, with_prior=True)
        tracks = make_tracklets(sb)
        cfg = RefineConfig(device=device, dtype=torch.float32, static_track_noise_px=1.0,  # the batch's pixel noise
                           solver=SolverOptions(loss="cauchy", loss_scale_px=2.0, max_iterations=it, sync_every=0))
        refine_tracklets(copy.deepcopy(tracks), cfg)
        ts = []
        for _ in range(max(3, args.repeats // 4)):
            tr = copy.deepcopy(tracks)
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            refine_tracklets(tr, cfg)
            ts.append(1e3 * (time.perf_counter() - t0))
        refine_rows.append({"device": device, "dtype": "float32", "tracklets": B, "frames": F,
                            "p50_ms": statistics.median(ts)})
        print(f"  refine_tracklets {device}: p50 {statistics.median(ts):.1f} ms", flush=True)
    return refine_rows


def _ceres_rows(args: argparse.Namespace, rows: list[dict]) -> dict:
    """Measurements 2 (pycolmap's half; adds the speed-up to the reprojection ``rows``) and 3 (agreement)."""
    F, K, it = args.frames, args.points, args.iterations
    ceres: dict = {"available": have_pycolmap()}
    if not ceres["available"]:
        return ceres
    # the same pure-reprojection problems as the CPU rows, one after another, same iteration cap
    B = args.cpu_tracklets
    problem, init = _problem(B, F, K, seed=1, dtype=torch.float64, full=False)
    ref = solve_with_pycolmap(problem, init, loss="cauchy", loss_scale_px=2.0, max_iterations=it, tight=False,
                              num_threads=1)
    per = ref.solve_s * 1e3
    obs = int(problem.obs_mask.sum()) / B
    ceres.update(
        problems=B, mean_solve_ms_per_problem=float(per.mean()), total_solve_ms=float(per.sum()),
        total_with_build_ms=float((ref.solve_s + ref.build_s).sum() * 1e3),
        mean_ceres_iterations=float(ref.iterations.mean()), observations_per_problem=obs,
    )
    for r in (r for r in rows if r["problem"] == "reprojection"):
        # scale pycolmap's total to the batch size that row solved
        total_same = float(per.mean()) * r["tracklets"]
        r["pycolmap_sequential_ms"] = total_same
        r["speedup_vs_pycolmap"] = total_same / r["p50_ms"]
    if args.check > 0:
        sb = make_batch(args.check, 8, 24, seed=21, noise_px=1.0, with_prior=False, fixed_frames=(0, 1))
        cref = solve_with_pycolmap(sb.problem, sb.init, loss="trivial", max_iterations=500)
        cres = solve(sb.problem, sb.init, SolverOptions(loss="trivial", max_iterations=500))
        rel = np.abs(cres.cost.numpy() - cref.cost) / cref.cost
        ceres.update(check_problems=args.check, check_max_rel_cost_diff=float(rel.max()),
                     check_median_rel_cost_diff=float(np.median(rel)), check_pass_1e6=bool(rel.max() < 1e-6))
    return ceres


def _print_summary(out: dict[str, Any], devices: list[str], it: int) -> None:
    """The result table of ``out`` (the JSON written by :func:`run`) on stdout."""
    rows, refine_rows, ceres = out["solver"], out["refine_tracklets"], out["pycolmap"]
    print()
    print(f"{'device':20s} {'dtype':8s} {'problem':13s} {'B':>4s} {'F':>3s} {'K':>3s} {'p50 ms':>9s} {'p90 ms':>9s} "
          f"{'vs pycolmap':>12s}")
    for r in rows:
        sp = f"{r['speedup_vs_pycolmap']:.1f}x" if "speedup_vs_pycolmap" in r else "-"
        dev = r["device"] + ("+graph" if r["cuda_graph"] else "") + ("+compiled" if r["compiled"] else "")
        print(f"{dev:20s} {r['dtype']:8s} {r['problem']:13s} {r['tracklets']:4d} {r['frames']:3d} {r['points']:3d} "
              f"{r['p50_ms']:9.2f} {r['p90_ms']:9.2f} {sp:>12s}")
    for r in refine_rows:
        print(f"refine_tracklets end to end ({r['device']}, {r['tracklets']} tracklets x {r['frames']} frames, "
              f"float32, static/moving test): p50 {r['p50_ms']:.1f} ms")
    if "cuda" not in devices:
        print("CUDA: not present on this machine; the CUDA path (same code, device argument) is unmeasured.")
    if ceres.get("problems"):
        print(f"pycolmap (Ceres, 1 thread, same problems one after another, {it} iterations max): "
              f"{ceres['mean_solve_ms_per_problem']:.2f} ms/problem, {ceres['total_solve_ms']:.1f} ms for {ceres['problems']}")
    if "check_max_rel_cost_diff" in ceres:
        print(f"agreement with Ceres on {ceres['check_problems']} problems (converged): max relative cost difference "
              f"{ceres['check_max_rel_cost_diff']:.2e} ({'pass' if ceres['check_pass_1e6'] else 'FAIL'} at 1e-6)")
    load = out["machine"]["loadavg"]
    if load:
        print(f"load average during the run: {load[0]:.2f} (shared machine: timings are noisy)")


def run(args: argparse.Namespace) -> int:
    """Run ``bench oba``: the four measurements of the module docstring; prints a table and writes ``--out``.

    Returns:
        The exit status (0).
    """
    torch.set_num_threads(max(1, args.threads))
    F, K, it = args.frames, args.points, args.iterations
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() and not args.no_cuda else [])
    timed = SolverOptions(loss="cauchy", loss_scale_px=2.0, max_iterations=it, sync_every=0, compute_covariance=False)
    rows = _solver_rows(args, devices, timed)

    if args.profile:
        _write_profile(devices[-1], args, F, K, timed)
    problem, init = _problem(args.tracklets, F, K, seed=1, dtype=torch.float32, full=True)
    ops = count_solve_ops(problem, init, timed)
    print(f"  aten ops per float32 prior+motion solve ({it} iterations, non-view): {ops} ({ops / it:.0f} per iteration)",
          flush=True)

    refine_rows = _refine_rows(args, devices)
    ceres = _ceres_rows(args, rows)

    out: dict[str, Any] = {
        "machine": {**machine_info(), "torch_threads": torch.get_num_threads()},
        "config": {"frames": F, "points": K, "iterations": it, "repeats": args.repeats, "loss": "cauchy(2px)",
                   "cuda_measured": "cuda" in devices},
        "solver": rows, "refine_tracklets": refine_rows, "pycolmap": ceres, "ops_per_solve": ops,
    }
    _print_summary(out, devices, it)
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2))
    print(f"wrote {path}")
    return 0
