"""The object-BA solver on CUDA: same optimum as on the CPU, and a captured CUDA graph replays it exactly.

Skipped (with the reason) on machines without a CUDA GPU; run them on one with
``python -m pytest test/core/test_oba_cuda.py``.
"""

from __future__ import annotations

import pytest
import torch

from ba_perception.core.oba.cuda_graph import CapturedSolve, GraphSolveCache
from ba_perception.core.oba.solver import OBASolverError, SolverOptions, solve
from ba_perception.data.oba_problems import make_batch

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")


def _batch(seed: int, B: int = 8, F: int = 8, K: int = 24, static: bool = False):
    sb = make_batch(B, F, K, seed=seed, noise_px=1.0, with_prior=True)
    sb.problem.motion_sqrt_info = torch.tensor([0.5] * 3 + [1.0] * 3, dtype=torch.float64).expand(B, 6).clone()
    if static:
        sb.problem.static = torch.arange(B) % 2 == 0
    return sb


@cuda
def test_cuda_float64_reaches_the_cpu_optimum():
    sb = _batch(1, static=True)
    opts = SolverOptions(max_iterations=30)
    cpu = solve(sb.problem, sb.init, opts)
    gpu = solve(sb.problem.to(device="cuda"), type(sb.init)(*(x.cuda() for x in sb.init.__dict__.values())), opts)
    rel = (gpu.cost.cpu() - cpu.cost).abs() / cpu.cost
    assert rel.max() < 1e-9
    assert (gpu.state.t_odom_obj.cpu() - cpu.state.t_odom_obj).abs().max() < 1e-6
    assert gpu.pose_covariance is not None and torch.isfinite(gpu.pose_covariance).all()


@cuda
def _cuda(sb, dtype=torch.float64):
    # float64: float32 sums through atomics differ from run to run and LM paths then drift apart
    return sb.problem.to(device="cuda", dtype=dtype), type(sb.init)(*(x.to("cuda", dtype) for x in sb.init.__dict__.values()))


@cuda
def test_captured_graph_replays_the_eager_solve_on_new_inputs():
    opts = SolverOptions(max_iterations=10, compute_covariance=False)
    p1, s1 = _cuda(_batch(2, static=True))
    p2, s2 = _cuda(_batch(3, static=True))
    graph = CapturedSolve(p1, s1, opts)
    eager = solve(p2, s2, SolverOptions(max_iterations=10, compute_covariance=False, sync_every=0))
    replay = graph(p2, s2)
    assert torch.allclose(replay.cost, eager.cost, rtol=1e-9)
    assert (replay.state.t_odom_obj - eager.state.t_odom_obj).abs().max() < 1e-6
    # static problems still collapse to one pose inside the graph
    st = p2.static
    t = replay.state.t_odom_obj[st]
    assert (t - t[:, :1]).abs().max() == 0


@cuda
def test_captured_graph_rejects_a_problem_of_another_shape():
    sb = _batch(4)
    p = sb.problem.to(device="cuda")
    graph = CapturedSolve(p, type(sb.init)(*(x.cuda() for x in sb.init.__dict__.values())), SolverOptions(max_iterations=3))
    other = _batch(5, B=4)
    with pytest.raises(OBASolverError, match="differs"):
        graph(other.problem.to(device="cuda"))


def test_captured_graph_needs_a_cuda_problem():
    sb = _batch(6, B=2)
    with pytest.raises(OBASolverError, match="CUDA"):
        CapturedSolve(sb.problem, sb.init)


@cuda
def test_graph_cache_pads_odd_batches_and_matches_the_eager_solve():
    opts = SolverOptions(max_iterations=8)
    cache = GraphSolveCache(bucket=16)
    for seed, B in ((7, 5), (8, 11), (9, 5)):  # two sizes share one padded graph
        p, init = _cuda(_batch(seed, B=B, static=True))
        lam = torch.full((B,), 1e-3, device="cuda", dtype=torch.float64)
        got = cache.solve(p, init, opts, lam)
        want = solve(p, init, SolverOptions(max_iterations=8, sync_every=0), initial_lambda=lam)
        assert got.cost.shape == (B,) and got.pose_covariance.shape[0] == B
        assert torch.allclose(got.cost, want.cost, rtol=1e-9)
        assert (got.state.t_odom_obj - want.state.t_odom_obj).abs().max() < 1e-6
    assert len(cache._graphs) == 1


def test_graph_cache_solves_cpu_problems_eagerly():
    sb = _batch(10, B=3)
    opts = SolverOptions(max_iterations=5)
    got = GraphSolveCache().solve(sb.problem, sb.init, opts)
    want = solve(sb.problem, sb.init, opts)
    assert torch.equal(got.cost, want.cost)


@cuda
def test_compiled_lm_iteration_reaches_the_eager_optimum_inside_a_graph():
    p, init = _cuda(_batch(11, B=6, static=True))
    eager = solve(p, init, SolverOptions(max_iterations=8, sync_every=0))
    got = CapturedSolve(p, init, SolverOptions(max_iterations=8, compiled=True))(p, init)
    assert torch.allclose(got.cost, eager.cost, rtol=1e-9)
    assert (got.state.t_odom_obj - eager.state.t_odom_obj).abs().max() < 1e-6
