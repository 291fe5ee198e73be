"""Batched constant-velocity Kalman filter for 3D track centres in ``odom``.

State per track: ``x = (px, py, pz, vx, vy, vz)`` (metres, m/s, odom frame). Measurements are
box centres ``z = (px, py, pz)``. All functions work on every track at once (arrays with a
leading track axis) so the tracker never loops over tracks in Python.
"""

from __future__ import annotations

import numpy as np


class KalmanError(ValueError):
    """Raised when filter inputs have inconsistent shapes."""


def initial_covariance(meas_var: np.ndarray, vel_std_mps: np.ndarray) -> np.ndarray:
    """Covariance ``(T, 6, 6)`` of new tracks.

    Args:
        meas_var: ``(T, 3, 3)`` measurement covariance of the first detection, m^2.
        vel_std_mps: ``(T,)`` prior standard deviation of the unknown velocity, m/s.
    """
    T = meas_var.shape[0]
    P = np.zeros((T, 6, 6))
    P[:, :3, :3] = meas_var
    P[:, 3:, 3:] = np.eye(3) * (vel_std_mps**2)[:, None, None]
    return P


def predict(
    x: np.ndarray, P: np.ndarray, dt_s: float, accel_std_xy: np.ndarray, accel_std_z: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Propagate all tracks by ``dt_s`` seconds under constant velocity.

    Process noise is white acceleration per axis (Bar-Shalom's discretised model):
    ``Q = sigma_a^2 [[dt^4/4, dt^3/2], [dt^3/2, dt^2]]`` for each (position, velocity) pair.

    Args:
        x: ``(T, 6)`` states. P: ``(T, 6, 6)`` covariances.
        dt_s: time step, seconds (>= 0).
        accel_std_xy, accel_std_z: ``(T,)`` acceleration noise per track (class), m/s^2.

    Returns:
        Predicted ``(x, P)`` (new arrays).
    """
    if x.ndim != 2 or x.shape[1] != 6 or P.shape != (x.shape[0], 6, 6):
        raise KalmanError(f"expected x (T, 6) and P (T, 6, 6), got {x.shape} and {P.shape}")
    dt = float(dt_s)
    x_new = x.copy()
    x_new[:, :3] += dt * x[:, 3:]
    # F P F^T with F = [[I, dt I], [0, I]] written blockwise (cheaper than 6x6 matmuls).
    Ppp, Ppv, Pvp, Pvv = P[:, :3, :3], P[:, :3, 3:], P[:, 3:, :3], P[:, 3:, 3:]
    P_new = np.empty_like(P)
    P_new[:, :3, :3] = Ppp + dt * (Ppv + Pvp) + dt * dt * Pvv
    P_new[:, :3, 3:] = Ppv + dt * Pvv
    P_new[:, 3:, :3] = Pvp + dt * Pvv
    P_new[:, 3:, 3:] = Pvv
    var = np.stack([accel_std_xy, accel_std_xy, accel_std_z], axis=1) ** 2  # (T, 3)
    idx = np.arange(3)
    P_new[:, idx, idx] += var * (dt**4 / 4.0)
    P_new[:, idx, idx + 3] += var * (dt**3 / 2.0)
    P_new[:, idx + 3, idx] += var * (dt**3 / 2.0)
    P_new[:, idx + 3, idx + 3] += var * dt**2
    return x_new, P_new


def update(
    x: np.ndarray, P: np.ndarray, z: np.ndarray, R: np.ndarray, block: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Fuse one 3-vector measurement per track, Joseph-free standard form.

    Args:
        x: ``(M, 6)``, P: ``(M, 6, 6)`` states of the matched tracks.
        z: ``(M, 3)`` measurements: centres in odom, metres (``block`` 0, ``H = [I3 0]``) or
            velocities, m/s (``block`` 3, ``H = [0 I3]``). R: ``(M, 3, 3)`` their covariance.
        block: first state index measured (0 centre, 3 velocity).

    Returns:
        Updated ``(x, P)``; ``P`` is symmetrised.
    """
    if z.shape != (x.shape[0], 3) or R.shape != (x.shape[0], 3, 3) or block not in (0, 3):
        raise KalmanError(f"expected z (M, 3), R (M, 3, 3) for M={x.shape[0]} and block 0 or 3, got {z.shape}, {R.shape}, {block}")
    sl = slice(block, block + 3)
    S = P[:, sl, sl] + R  # innovation covariance
    PHt = P[:, :, sl]  # (M, 6, 3)
    # K = P H^T S^-1  ->  solve S^T K^T = (P H^T)^T
    K = np.linalg.solve(S, PHt.transpose(0, 2, 1)).transpose(0, 2, 1)
    innov = z - x[:, sl]
    x_new = x + np.einsum("mij,mj->mi", K, innov)
    P_new = P - K @ P[:, sl, :]
    P_new = 0.5 * (P_new + P_new.transpose(0, 2, 1))
    return x_new, P_new

