"""config/stack.yaml and the generated docs agree with the parameters the nodes declare and the stored results."""

from __future__ import annotations

from pathlib import Path

import yaml

from ba_perception.graph import NODES, default_params_file
from ba_perception.params_doc import node_params, reference
from ba_perception.results_doc import table

ROOT = Path(__file__).resolve().parents[1]


def test_every_configured_parameter_is_declared_and_valid():
    cfg = yaml.safe_load(default_params_file().read_text())
    names = {s.name for s in NODES}
    assert set(cfg) <= names, f"stack.yaml configures unknown nodes {set(cfg) - names}"
    for node, section in cfg.items():
        specs = {p.name: p for p in node_params(node)}
        for key, value in section["ros__parameters"].items():
            assert key in specs, f"{node}.{key} in stack.yaml is not a parameter of {node}"
            spec = specs[key]
            assert type(value) is type(spec.default) or (isinstance(spec.default, float) and isinstance(value, int)), \
                f"{node}.{key}: {value!r} does not have the declared type {type(spec.default).__name__}"
            spec.validate(value)


def test_parameter_reference_is_current():
    assert reference() in (ROOT / "docs" / "parameters.md").read_text(), \
        "docs/parameters.md is stale: run `ba-perception params-doc --write docs/parameters.md`"


def test_readme_results_table_is_current():
    assert table() in (ROOT / "README.md").read_text(), \
        "README.md's results table is stale: run `ba-perception results-doc --write README.md`"
