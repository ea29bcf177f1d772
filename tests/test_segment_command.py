"""``lposs segment``: a real run in a subprocess (random weights) and every bad input."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from segmentation import cli


def test_segment_writes_pictures_and_skips_unreadable_images(tmp_path):
    """Published architectures with random weights, in a fresh process: a greyscale and an RGBA
    image are segmented and written; a missing file gets one line and exit status 1."""
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (40, 70), dtype=np.uint8)).save(tmp_path / "grey.png")
    Image.fromarray(rng.integers(0, 256, (50, 30, 4), dtype=np.uint8)).save(tmp_path / "rgba.png")
    out = tmp_path / "out"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "LPOSS_CACHE_DIR": str(tmp_path / "cache")}
    result = subprocess.run(
        [sys.executable, "-m", "segmentation.cli", "segment", str(tmp_path / "grey.png"), str(tmp_path / "nope.png"),
         str(tmp_path / "rgba.png"), "--classes", "road,car,sky;cloud", "--random-init", "--out", str(out),
         "--save-scores", "--method", "lposs", "--device", "cpu"],
        capture_output=True, text=True, env=env, timeout=600,
    )
    assert result.returncode == 1, result.stderr
    errors = [line for line in result.stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and "nope.png" in errors[0]
    assert "Traceback" not in result.stderr
    for name, size in (("grey", (70, 40)), ("rgba", (30, 50))):
        labels = Image.open(out / f"{name}_labels.png")
        assert labels.mode == "P" and labels.size == size
        assert np.asarray(labels).max() < 3
        overlay = Image.open(out / f"{name}_overlay.png")
        assert overlay.height >= size[1] and overlay.width > size[0]  # the legend is beside the image
        assert np.load(out / f"{name}_scores.npy").shape == (3, size[1], size[0])
        assert any(line.startswith(str(tmp_path / f"{name}.png")) and "%" in line
                   for line in result.stdout.splitlines())


@pytest.mark.parametrize(
    "argv, message",
    [
        (["segment", "x.png"], "give the class names"),
        (["segment", "--classes", ""], "empty"),
        (["segment", "--classes", "car,road,car"], "given twice"),
        (["segment", "--classes", "a", "--vlm", "nothing:model"], "unknown encoder 'nothing'"),
        (["segment", "--classes", "a", "--classes-file", "f.txt"], "either --classes or --classes-file"),
        (["segment", "--classes-file", "missing.txt"], "classes file not found"),
        (["segment", "--classes", "a", "--device", "tpu"], "--device must be cpu, cuda or cuda:N"),
        (["segment", "--classes", "a", "--method", "maskclip"], "cannot load weights for open_clip model 'ViT-B-16'"),
    ],
)
def test_bad_input_is_one_line_and_nonzero(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "lposs-output").exists()


def test_opencv_resize_without_opencv_is_one_line(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(sys.modules, "cv2", None)  # as if opencv-python-headless were not installed
    assert cli.main(["segment", "--classes", "a", "--resize", "opencv", "--random-init"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pip install opencv-python-headless" in err[0], err
