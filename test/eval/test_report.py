"""The one-screen summary says which way object BA moved the depth error."""

from __future__ import annotations

from ba_perception.eval.report import summary_lines


def _depth_line(reduction):
    s = {"depth_ba": {"min_frames": 5, "objects": 10, "single_abs_median_m": 0.7, "refined_abs_median_m": 0.7 * (1 - reduction),
                      "reduction": reduction}}
    (line,) = [x for x in summary_lines(s) if x.startswith("depth error")]
    return line


def test_depth_change_reads_lower_or_higher():
    assert _depth_line(0.111).endswith("(11.1% lower)")
    assert _depth_line(-0.053).endswith("(5.3% higher)")
    assert _depth_line(float("nan")).endswith("(n/a)")
