"""Tracker methods ranked by the metric wrapper on a synthetic crowded scene (issue 6's bars, simulated)."""

from __future__ import annotations

import pytest

from ba_perception.eval.tracking_compare import compare


@pytest.fixture(scope="module")
def rows():
    return compare("crowded", n_frames=80, n_objects=30, seeds=[0], variants=["hungarian_iou", "hungarian_3d", "graph"])


def test_graph_matching_beats_hungarian_3d_by_the_issue_bars(rows):
    g, h = rows["graph"], rows["hungarian_3d"]
    assert g["HOTA"] >= h["HOTA"] + 0.02
    assert g["IDSW"] <= 0.6 * h["IDSW"]


def test_3d_association_beats_2d_iou_in_a_crowd(rows):
    assert rows["hungarian_3d"]["HOTA"] > rows["hungarian_iou"]["HOTA"]
    assert rows["hungarian_3d"]["AssA"] > rows["hungarian_iou"]["AssA"]
