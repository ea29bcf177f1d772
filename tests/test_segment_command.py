"""``lposs segment``: a real run in a subprocess (random weights), folders and reruns, two
processes under torchrun against one, and every bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segmentation import cli

ROOT = Path(__file__).resolve().parents[1]
VM = "timm:vit_small_patch16_224.dino"


def _tiny(tiny_clip_configs) -> list[str]:
    """The small test encoders (random weights) and MaskCLIP-free LPOSS: seconds per image."""
    return ["--vlm", f"open_clip:{tiny_clip_configs[0]}", "--vm", VM, "--random-init", "--device", "cpu",
            "--method", "lposs"]


def _photos(root: Path) -> Path:
    """root/{x.png, a/y.jpg, a/b/z.png}: tiny random images."""
    rng = np.random.default_rng(0)
    for name, shape in (("x.png", (30, 40)), ("a/y.jpg", (36, 30)), ("a/b/z.png", (33, 33))):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (*shape, 3), dtype=np.uint8)).save(root / name)
    return root


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


def test_a_folder_run_a_rerun_and_overwrite(tmp_path, tiny_clip_configs, quiet_random_init, capsys):
    """A tree with a broken image: the others are written mirrored, one error line, exit 1, a summary;
    the rerun skips the done images without rewriting them; --overwrite redoes them."""
    photos = _photos(tmp_path / "photos")
    (photos / "a" / "broken.png").write_text("not a png")
    out = tmp_path / "out"
    argv = ["segment", str(photos), "--classes", "cat,sky;cloud", "--out", str(out), *_tiny(tiny_clip_configs)]
    assert cli.main(argv) == 1
    captured = capsys.readouterr()
    errors = [line for line in captured.err.splitlines() if "error" in line]
    assert len(errors) == 1 and "broken.png" in errors[0] and "Traceback" not in captured.err
    written = sorted(str(p.relative_to(out)) for p in out.rglob("*.png"))
    assert written == ["a/b/z_labels.png", "a/b/z_overlay.png", "a/y_labels.png", "a/y_overlay.png",
                       "x_labels.png", "x_overlay.png"]
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["done"], summary["skipped"], summary["failed"]) == (3, 0, 1)
    entries = {e["image"]: e for e in summary["images"]}
    assert entries["a/broken.png"]["status"] == "failed" and "broken.png" in entries["a/broken.png"]["reason"]
    for name in ("x.png", "a/y.jpg", "a/b/z.png"):
        labels = np.asarray(Image.open(out / name.replace(Path(name).suffix, "_labels.png")))
        counts = np.bincount(labels.reshape(-1), minlength=2)
        assert entries[name]["classes"] == {n: round(100 * c / labels.size, 4)
                                            for n, c in zip(["cat", "sky"], counts, strict=True) if c}
        assert entries[name]["seconds"] > 0
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*.png")}
    (photos / "a" / "broken.png").unlink()
    assert cli.main(argv) == 0
    assert "skipped" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.png")} == stamps
    assert json.loads((out / "summary.json").read_text())["skipped"] == 3
    assert cli.main([*argv, "--overwrite"]) == 0
    assert all(p.stat().st_mtime_ns != stamp for p, stamp in stamps.items())


def test_two_processes_under_torchrun_equal_one(tmp_path):
    """gloo on CPU: each image done by one rank; the files are byte for byte one process's."""
    from conftest import TINY_CLIP, run_under_torchrun

    photos = _photos(tmp_path / "photos")
    outputs = {}
    for procs in (1, 2):
        out = tmp_path / f"out{procs}"
        done = run_under_torchrun(tmp_path, "segmentation.segment", procs, [
            str(photos), "--classes", "cat,sky;cloud", "--out", str(out), "--coco-json", str(out / "coco.json"),
            "--vlm", f"open_clip:{TINY_CLIP}", "--vm", VM, "--random-init", "--device", "cpu", "--method", "lposs"],
            port=29700)
        outputs[procs] = {str(p.relative_to(out)): p.read_bytes() for p in out.rglob("*.png")}
        summary = json.loads((out / "summary.json").read_text())
        assert summary["world_size"] == procs and summary["done"] == 3
        outputs[procs]["coco"] = (out / "coco.json").read_bytes()
        if procs == 2:  # each image once: one line per image over both ranks
            assert sum(line.startswith(str(photos)) for line in done.stdout.splitlines()) == 3
    assert len(outputs[1]) == 7 and outputs[1] == outputs[2]


def test_folder_bad_input_is_one_line_and_exit_2(tmp_path, tiny_clip_configs, capsys, quiet_random_init):
    photos = _photos(tmp_path / "photos")
    (tmp_path / "empty").mkdir()
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(photos / "x.jpg")  # beside x.png
    (tmp_path / "a-file").write_text("")
    cases = [
        ([str(tmp_path / "empty")], "no images in folder"),
        ([str(photos / "a"), "--glob", "*.gif"], "no images matching --glob '*.gif'"),
        ([str(photos / "a"), "--out", str(photos / "a" / "seg")], "is inside the input folder"),
        ([str(photos)], "would both write x_labels.png"),
        ([str(photos / "x.png"), "--batch-size", "0"], "--batch-size must be a positive integer"),
        ([str(photos / "x.png"), "--out", str(tmp_path / "a-file" / "out")], "cannot write to --out"),
    ]
    for extra, message in cases:
        argv = ["segment", *extra, "--classes", "cat,dog", *_tiny(tiny_clip_configs)]
        if "--out" not in extra:
            argv += ["--out", str(tmp_path / "out")]
        assert cli.main(argv) == 2, extra
        err = [line for line in capsys.readouterr().err.strip().splitlines() if "--random-init" not in line]
        assert len(err) == 1 and message in err[0], (extra, err)
    assert not (tmp_path / "out").exists() and not (photos / "a" / "seg").exists()
