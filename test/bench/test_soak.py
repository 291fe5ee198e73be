"""bench soak: RSS growth after warm-up is measured on the samples after it, robust to single spikes."""

from __future__ import annotations

import pytest

from ba_perception.bench.soak import _rss_growth
from ba_perception.cli import main


def test_rss_growth_ignores_warmup_and_spikes():
    t = list(range(0, 200, 5))
    rss = [100.0 if s < 30 else 300.0 for s in t]  # model load in the warm-up
    rss[20] = 900.0  # one spike (a big frame), not growth
    g = _rss_growth(rss, t, warmup=30.0)
    assert g["rss_after_warmup_mb"] == 300.0 and g["rss_end_mb"] == 300.0 and g["growth_pct"] == 0.0
    leak = [300.0 + s for s in t]
    assert _rss_growth(leak, t, warmup=30.0)["growth_pct"] > 40.0
    assert _rss_growth([1.0], [0.0], warmup=30.0)["growth_pct"] is None


def test_soak_rejects_an_unknown_node_to_kill(capsys):
    assert main(["bench", "soak", "--kill", "camera_node", "--minutes", "0.1"]) == 2
    assert "--kill camera_node" in capsys.readouterr().err
