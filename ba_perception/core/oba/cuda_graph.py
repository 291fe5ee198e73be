"""Object-BA solves replayed from CUDA graphs (no per-kernel launch cost), for fixed and varying batch sizes."""

from __future__ import annotations

from dataclasses import fields, replace
from typing import TypeVar

import torch

from ba_perception.core.oba.problem import (
    OBAProblem,
    OBAResult,
    OBASolverError,
    OBAState,
    SolverOptions,
)
from ba_perception.core.oba.solver import _check, solve

_OptionalTensor = TypeVar("_OptionalTensor", torch.Tensor, None)  # an optional OBAProblem field: None stays None


class CapturedSolve:
    """:func:`solve` recorded once as a CUDA graph and replayed on new inputs of the same shapes.

    One LM solve launches hundreds of small kernels per iteration; replaying a graph removes the
    per-launch host cost, which dominates at the node's sizes. The graph holds its own input and
    output tensors: :meth:`__call__` copies the new problem and initial state into them, replays,
    and returns the static :class:`OBAResult` (overwritten by the next call: clone what you keep).

    Every optional field that is set on the capture problem must be set on later problems, and
    vice versa (the graph records which terms exist). ``options.sync_every`` is forced to 0 and
    ``assume_static`` to True (no host sync may happen inside a capture).

    Raises:
        OBASolverError: the problem is not on a CUDA device, or a later problem's fields or shapes differ.
    """

    def __init__(self, problem: OBAProblem, init: OBAState, options: SolverOptions | None = None, warmup: int = 2) -> None:
        if problem.obs_uv.device.type != "cuda":
            raise OBASolverError("CapturedSolve needs the problem on a CUDA device")
        self.options = SolverOptions(**{**{f.name: getattr(options or SolverOptions(), f.name) for f in fields(SolverOptions)},
                                        "sync_every": 0, "assume_static": True})
        dev, dt = problem.obs_uv.device, problem.obs_uv.dtype
        self.problem = problem.to(device=dev, dtype=dt)
        self.problem = replace(self.problem, **{f.name: _clone(getattr(self.problem, f.name)) for f in fields(OBAProblem)})
        self.init = OBAState(*(x.to(device=dev, dtype=dt).clone() for x in (init.R_odom_obj, init.t_odom_obj, init.points_obj)))
        self.initial_lambda = torch.full((problem.shape[0],), self.options.initial_lambda, dtype=dt, device=dev)
        stream = torch.cuda.Stream(device=dev)
        stream.wait_stream(torch.cuda.current_stream(dev))
        with torch.cuda.stream(stream):
            for _ in range(max(1, warmup)):  # allocator and library handles settle outside the capture
                solve(self.problem, self.init, self.options, self.initial_lambda)
        torch.cuda.current_stream(dev).wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.result = solve(self.problem, self.init, self.options, self.initial_lambda)

    def __call__(self, problem: OBAProblem | None = None, init: OBAState | None = None,
                 initial_lambda: torch.Tensor | None = None) -> OBAResult:
        """Copy ``problem`` / ``init`` (when given) into the graph's inputs, replay, return the graph's result.

        ``initial_lambda`` (``(B,)``) warm-starts the damping; None restarts it at ``options.initial_lambda``.
        """
        if problem is not None:
            for f in fields(OBAProblem):
                dst, src = getattr(self.problem, f.name), getattr(problem, f.name)
                if (dst is None) != (src is None) or (src is not None and src.shape != dst.shape):
                    raise OBASolverError(f"CapturedSolve: field {f.name} differs from the captured problem "
                                         f"({None if src is None else tuple(src.shape)} vs {None if dst is None else tuple(dst.shape)})")
                if src is not None:
                    dst.copy_(src, non_blocking=True)
        if init is not None:
            for dst, src in zip((self.init.R_odom_obj, self.init.t_odom_obj, self.init.points_obj),
                                (init.R_odom_obj, init.t_odom_obj, init.points_obj)):
                if src.shape != dst.shape:
                    raise OBASolverError(f"CapturedSolve: initial state shape {tuple(src.shape)} differs from {tuple(dst.shape)}")
                dst.copy_(src, non_blocking=True)
        if initial_lambda is None:
            self.initial_lambda.fill_(self.options.initial_lambda)
        else:
            self.initial_lambda.copy_(initial_lambda, non_blocking=True)
        self.graph.replay()
        return self.result


def _clone(x: _OptionalTensor) -> _OptionalTensor:
    """A copy of ``x`` (None stays None)."""
    return None if x is None else x.clone()


def _pad_batch(x: _OptionalTensor, n: int) -> _OptionalTensor:
    """``x`` with ``n`` zero rows appended along the batch dimension (None stays None)."""
    if x is None or n == 0:
        return x
    return torch.cat([x, x.new_zeros((n, *x.shape[1:]))])


class GraphSolveCache:
    """CUDA-graph solves for batches of varying size.

    The batch is padded to a multiple of ``bucket`` with disabled problems, and one :class:`CapturedSolve` is kept per padded shape (at most
    ``max_graphs``, least recently used dropped). CPU problems are solved eagerly.

    The result is cut back to the caller's batch and cloned, so it stays valid after later calls.
    """

    def __init__(self, bucket: int = 16, max_graphs: int = 8) -> None:
        self.bucket, self.max_graphs = max(1, bucket), max(1, max_graphs)
        self._graphs: dict[tuple, CapturedSolve] = {}

    def solve(self, problem: OBAProblem, init: OBAState, options: SolverOptions,
              initial_lambda: torch.Tensor | None = None) -> OBAResult:
        """Same contract as :func:`solve`."""
        if problem.obs_uv.device.type != "cuda":
            return solve(problem, init, options, initial_lambda)
        _check(problem)
        B = problem.shape[0]
        n = -B % self.bucket
        mask = problem.problem_mask if problem.problem_mask is not None else torch.ones(B, dtype=torch.bool, device=problem.obs_uv.device)
        padded = replace(problem, **{f.name: _pad_batch(getattr(problem, f.name), n) for f in fields(OBAProblem)})
        padded.problem_mask = _pad_batch(mask, n)
        state = OBAState(*(_pad_batch(x, n) for x in (init.R_odom_obj, init.t_odom_obj, init.points_obj)))
        lam = None if initial_lambda is None else torch.cat([initial_lambda, initial_lambda.new_full((n,), options.initial_lambda)])
        key = (tuple(padded.obs_uv.shape), padded.obs_uv.dtype, str(padded.obs_uv.device),
               tuple(getattr(padded, f.name) is None for f in fields(OBAProblem)),
               tuple(getattr(options, f.name) for f in fields(SolverOptions)))
        graph = self._graphs.pop(key, None)
        if graph is None:
            if len(self._graphs) >= self.max_graphs:
                self._graphs.pop(next(iter(self._graphs)))
            graph = CapturedSolve(padded, state, options)
        self._graphs[key] = graph  # most recently used last
        r = graph(padded, state, lam)
        return OBAResult(OBAState(_cut(r.state.R_odom_obj, B), _cut(r.state.t_odom_obj, B), _cut(r.state.points_obj, B)),
                         _cut(r.cost, B), _cut(r.initial_cost, B), _cut(r.iterations, B), _cut(r.converged, B), _cut(r.valid, B),
                         _cut(r.lam, B), None if r.pose_covariance is None else _cut(r.pose_covariance, B), _cut(r.num_obs, B))


def _cut(x: torch.Tensor, B: int) -> torch.Tensor:
    """A copy of the first ``B`` rows of ``x`` (the caller's batch, without the padding)."""
    return x[:B].clone()
