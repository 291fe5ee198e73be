"""Tests of the `synth` and `world-preview` commands: outputs, resume, and one-line errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ba_perception.cli import main
from ba_perception.data.bag import read_bag
from ba_perception.data.kitti import read_kitti
from ba_perception.data.synth import WORLD_VERSION
from ba_perception.data.world import meshes as M

ARGS = ["--sequences", "2", "--frames", "3", "--width", "160", "--height", "64"]


def test_synth_writes_versioned_split_with_bags_kitti_and_manifest(tmp_path, capsys):
    rc = main(["synth", "--split", "mini", "--preset", "urban,highway", "--out", str(tmp_path), "--kitti", *ARGS])
    assert rc == 0
    root = tmp_path / f"world-{WORLD_VERSION}" / "mini"
    manifest = json.loads((root / "manifest.json").read_text())
    assert sorted(manifest["sequences"]) == ["seq_0000", "seq_0001"]
    assert [manifest["sequences"][s]["config"]["preset"] for s in ("seq_0000", "seq_0001")] == ["urban", "highway"]
    assert (root / "seq_0001" / "seq_0001.mcap").is_file()
    frames = list(read_bag(root / "seq_0001"))
    assert len(frames) == 3 and frames[0].image.shape == (64, 160, 3)
    kitti = list(read_kitti(root / "kitti", 1))
    assert len(kitti) == 3 and np.array_equal(kitti[2].image, frames[2].image)


def test_synth_resumes_finished_sequences_and_redoes_partial_ones(tmp_path):
    args = ["synth", "--split", "r", "--preset", "parking_lot", "--out", str(tmp_path), *ARGS]
    assert main(args) == 0
    root = tmp_path / f"world-{WORLD_VERSION}" / "r"
    first = (root / "seq_0000" / "seq_0000.mcap").stat().st_mtime_ns
    # simulate an interrupted second sequence
    manifest = json.loads((root / "manifest.json").read_text())
    del manifest["sequences"]["seq_0001"]
    (root / "manifest.json").write_text(json.dumps(manifest))
    (root / "seq_0001").rename(root / "seq_0001.partial")
    assert main(args) == 0
    assert (root / "seq_0000" / "seq_0000.mcap").stat().st_mtime_ns == first
    assert (root / "seq_0001" / "seq_0001.mcap").is_file() and not (root / "seq_0001.partial").exists()
    assert len(list(read_bag(root / "seq_0001"))) == 3


@pytest.mark.parametrize(
    "extra, needle",
    [
        (["--preset", "moon"], "unknown preset moon"),
        (["--out", "/proc/forbidden"], "choose a writable --out"),
    ],
)
def test_synth_bad_input_gives_one_line_error(tmp_path, capsys, extra, needle):
    rc = main(["synth", "--out", str(tmp_path), *ARGS, *extra])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and needle in err and len(err.splitlines()) == 1


def test_synth_without_meshes_names_the_setup_step(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(M, "TRIGGER_RALLY_ZIP", tmp_path / "missing.zip")
    rc = main(["synth", "--out", str(tmp_path), *ARGS])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "trigger-rally-data" in err and "setup.sh" in err and len(err.splitlines()) == 1


def test_world_preview_writes_sheet_and_gif(tmp_path):
    from PIL import Image

    out, gif = tmp_path / "sheet.png", tmp_path / "a.gif"
    rc = main(["world-preview", "--preset", "urban", "--frames", "4", "--tiles", "2", "--width", "200",
               "--height", "80", "--out", str(out), "--gif", str(gif)])
    assert rc == 0
    sheet = Image.open(out)
    assert sheet.size == (2 * 204, 2 * 84)  # 2 frames + depth + instance tiles, 2 columns
    assert Image.open(gif).n_frames == 4
