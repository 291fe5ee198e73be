"""Tests of the KITTI tracking export/import round trip."""

from __future__ import annotations

import numpy as np
import pytest

from ba_perception.data.kitti import KittiError, KittiWriter, occlusion_level, read_kitti, truncation_level
from ba_perception.data.world import WorldConfig, render_sequence


@pytest.fixture(scope="module")
def frames():
    return list(render_sequence(WorldConfig(preset="urban", seed=8, width=256, height=96, n_frames=4)))


def test_export_then_import_gives_back_poses_boxes_and_images(tmp_path, frames):
    with KittiWriter(tmp_path, seq=3) as kw:
        for f in frames:
            kw.write(f)
    for sub in ("image_02/0003/000003.png", "label_02/0003.txt", "calib/0003.txt", "oxts/0003.txt"):
        assert (tmp_path / sub).is_file(), sub
    back = list(read_kitti(tmp_path, 3))
    assert len(back) == len(frames)
    T0 = np.linalg.inv(frames[0].T_odom_base)
    for f, b in zip(frames, back):
        assert np.array_equal(b.image, f.image)
        assert np.allclose(b.K, f.K)
        assert np.allclose(b.T_base_cam, f.T_base_cam, atol=1e-9)
        # KITTI poses are relative to the first frame (Mercator round trip)
        assert np.allclose(b.T_odom_base, T0 @ f.T_odom_base, atol=1e-6)
        g, h = f.objects, b.objects
        keep = np.isfinite(g.box_full).all(1)
        assert keep.sum() > 0 and len(h) == keep.sum()
        assert np.array_equal(h.track_id, g.track_id[keep])
        assert h.class_label == [c for c, k in zip(g.class_label, keep) if k]
        assert np.allclose(h.center_cam, g.center_cam[keep], atol=2e-6)
        assert np.allclose(h.size_lwh, g.size_lwh[keep], atol=2e-6)
        assert np.allclose(np.cos(h.rotation_y - g.rotation_y[keep]), 1.0, atol=1e-9)
        assert np.allclose(h.box_full, g.box_full[keep], atol=0.006)
        assert np.allclose(h.box_amodal, g.box_amodal[keep], atol=1e-3)
        assert list(h.truncation) == [truncation_level(t) for t in g.truncation[keep]]
        assert list(h.occlusion) == [occlusion_level(o) for o in g.occlusion[keep]]
        assert np.allclose(b.velocity_base, f.velocity_base) and b.yaw_rate == pytest.approx(f.yaw_rate)
    # velocities from central differences of the exported tracks match the exact ones roughly
    mid = back[1].objects
    g = frames[1].objects
    for i, tid in enumerate(mid.track_id):
        j = g.index_of(int(tid))
        assert np.linalg.norm(mid.velocity_odom[i] - g.velocity_odom[j]) < 0.5


def test_missing_calibration_is_reported(tmp_path):
    with pytest.raises(KittiError, match="calib"):
        list(read_kitti(tmp_path, 0))
