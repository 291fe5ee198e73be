"""One truth per default: node declarations, core config dataclasses and config/stack.yaml agree.

The algorithms' defaults live in the core dataclasses (what ships); the nodes declare their
parameters from them; stack.yaml holds deployment settings only, so the configuration the node
runs, the one ``eval-oba`` / ``eval-track`` / ``bench pipeline`` build from the parameter file and
the dataclass defaults are the same object.
"""

from __future__ import annotations

from dataclasses import fields

import pytest
import yaml

from ba_perception.core.detection.decode import DecodeConfig
from ba_perception.core.oba.stage import TrackBufferConfig
from ba_perception.core.tracking import TrackerConfig
from ba_perception.graph import default_params_file, node_parameters
from ba_perception.params_doc import node_params

# node -> (parameters -> core config, the parameter names that config reads)
CONFIGS = {
    "detector_node": (DecodeConfig.from_params, DecodeConfig(), {f.name for f in fields(DecodeConfig)}),
    "track_buffer_node": (TrackBufferConfig.from_params, TrackBufferConfig(), TrackBufferConfig.param_names()),
    "tracker_node": (TrackerConfig.from_params, TrackerConfig(), {f.name for f in fields(TrackerConfig)}),
}
# stack.yaml values that deliberately differ from the node's declared default (deployment choices)
DEPLOYMENT_OVERRIDES = {
    ("bag_player", "wait_for_subscribers"), ("bag_player", "wait_timeout_s"),
    ("detector_node", "input_qos_depth"), ("bag_recorder", "topics"), ("bag_recorder", "types"),
}


def _declared(node: str) -> dict:
    return {s.name: s.default for s in node_params(node)}


@pytest.mark.parametrize("node", sorted(CONFIGS))
def test_declared_defaults_are_the_core_defaults(node):
    build, default, _ = CONFIGS[node]
    assert build(_declared(node)) == default, f"{node}'s declared parameter defaults differ from the core config's"


@pytest.mark.parametrize("node", sorted(CONFIGS))
def test_every_core_setting_is_declared(node):
    _, _, names = CONFIGS[node]
    declared = set(_declared(node))
    # settings the node does not expose keep their core default everywhere (the node, eval, bench)
    hidden = names - declared
    build, default, _ = CONFIGS[node]
    assert build({k: v for k, v in _declared(node).items() if k not in hidden}) == default
    assert declared & names, f"{node} declares none of its core config's settings"


@pytest.mark.parametrize("node", sorted(CONFIGS))
def test_stack_yaml_runs_the_core_defaults(node):
    build, default, names = CONFIGS[node]
    p = node_parameters(default_params_file(), node)
    assert not set(p) & names, f"stack.yaml sets algorithm settings of {node}: {sorted(set(p) & names)} (they belong in the core config)"
    assert build({**_declared(node), **p}) == default


def test_stack_yaml_agrees_with_the_declarations():
    cfg = yaml.safe_load(default_params_file().read_text())
    for node, section in cfg.items():
        declared = _declared(node)
        for key, value in section["ros__parameters"].items():
            if (node, key) not in DEPLOYMENT_OVERRIDES:
                assert value == declared[key], f"{node}.{key}: stack.yaml {value!r}, declared {declared[key]!r}"


def test_the_tracklet_keeps_the_static_window_and_the_ba_takes_the_window():
    c = TrackBufferConfig.from_params({"window": 6, "static_window": 12})
    assert (c.refine.window, c.tracklets.window) == (6, 12)
    for short in (0, 4, 6):  # 0 or <= window: the BA window
        assert TrackBufferConfig.from_params({"window": 6, "static_window": short}).tracklets.window == 6
    assert TrackBufferConfig.from_params({"dtype": "float64"}).refine.dtype != TrackBufferConfig().refine.dtype
    assert TrackBufferConfig.from_params({"max_iterations": 3}).refine.solver.max_iterations == 3
