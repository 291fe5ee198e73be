"""Tests of the viewing-ray uncertainty helpers."""

from __future__ import annotations

import torch

from ba_perception.core.geometry import ray_covariance, ray_sqrt_information


def test_ray_sqrt_information_whitens_ray_covariance_with_the_ray_first():
    g = torch.Generator().manual_seed(0)
    centers = torch.randn(200, 3, generator=g, dtype=torch.float64)
    centers[:3] = torch.tensor([[0.0, 0.0, 5.0], [1e-9, 3.0, 0.0], [2.0, 0.0, 0.0]], dtype=torch.float64)  # axis-aligned rays
    depth_std = 0.1 + torch.rand(200, generator=g, dtype=torch.float64)
    lateral_std = 0.01 + 0.1 * torch.rand(200, generator=g, dtype=torch.float64)
    ray = centers / centers.norm(dim=-1, keepdim=True)
    L = ray_sqrt_information(ray, depth_std, lateral_std)
    info = torch.linalg.inv(ray_covariance(centers, depth_std, lateral_std))
    assert torch.allclose(L.transpose(-1, -2) @ L, info, rtol=1e-9, atol=1e-9)
    assert torch.allclose(L[:, 0], ray / depth_std[:, None], atol=1e-12)
