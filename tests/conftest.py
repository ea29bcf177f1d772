"""Shared test fixtures: no network, a private cache directory, tiny model configurations."""

from __future__ import annotations

import ipaddress
import json
import os
import socket
import warnings

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing in the suite may download
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# A small open_clip ViT: the same architecture family as ViT-B-16 (pre-LN blocks, CLS token,
# learnable positional embedding, causal text tower with argmax pooling), a 4 x 4 patch grid at
# 64 px, so tests run in milliseconds.
TINY_CLIP = "lposs-test-ViT-T-16"
TINY_CLIP_CONFIG = {
    "embed_dim": 48,
    "vision_cfg": {"image_size": 64, "layers": 3, "width": 64, "patch_size": 16, "head_width": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 4, "layers": 2},
}
# The same text tower without a causal mask, read at the last position (SigLIP-style): the
# truncated text pass does not hold for it and the full pass must be used.
TINY_CLIP_NONCAUSAL = "lposs-test-ViT-T-16-noncausal"
TINY_CLIP_NONCAUSAL_CONFIG = {
    "embed_dim": 48,
    "custom_text": True,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "patch_size": 16, "head_width": 16},
    "text_cfg": {
        "context_length": 77, "vocab_size": 49408, "width": 64, "heads": 4, "layers": 2,
        "no_causal_mask": True, "pool_type": "last",
    },
}


@pytest.fixture(autouse=True)
def _no_network(monkeypatch):
    """Refuse every socket connection that does not stay on this machine."""
    real_connect = socket.socket.connect

    def guarded_connect(self, address):
        host = address[0] if isinstance(address, tuple) else None
        if host is not None:
            try:
                local = ipaddress.ip_address(host).is_loopback
            except ValueError:
                local = host == "localhost"
            if not local:
                raise RuntimeError(f"test tried to reach the network ({address!r})")
        return real_connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", guarded_connect)


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    """Every test gets an empty LPOSS cache directory, never the user's."""
    monkeypatch.setenv("LPOSS_CACHE_DIR", str(tmp_path_factory.mktemp("lposs-cache")))


@pytest.fixture(scope="session")
def tiny_clip_configs(tmp_path_factory):
    """Register the tiny open_clip configurations; returns their names."""
    import open_clip

    folder = tmp_path_factory.mktemp("open_clip_configs")
    for name, config in ((TINY_CLIP, TINY_CLIP_CONFIG), (TINY_CLIP_NONCAUSAL, TINY_CLIP_NONCAUSAL_CONFIG)):
        (folder / f"{name}.json").write_text(json.dumps(config))
    open_clip.add_model_config(folder)
    return TINY_CLIP, TINY_CLIP_NONCAUSAL


@pytest.fixture()
def quiet_random_init():
    """Silence the random-weights warning in tests that build models with random weights on purpose."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*random weights.*")
        yield


# LPOSS settings for small images (a 96 px short side, windows of 64), so a pipeline runs in a second.
SMALL_CONFIG_KWARGS = dict(short_side=96, long_side_cap=512, window=64, stride=32, k=30)


@pytest.fixture(scope="session")
def small_encoders(tiny_clip_configs):
    """(vlm, vm) with random weights: the tiny open_clip ViT (one template) and a 2-block DINO ViT-S/16."""
    import torch

    from encoders import OpenCLIPEncoder, TimmViTEncoder

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.manual_seed(0)
        vlm = OpenCLIPEncoder(tiny_clip_configs[0], pretrained=None, device="cpu", templates=["a {}"],
                              text_cache=False)
        vm = TimmViTEncoder("vit_small_patch16_224.dino", pretrained=None, device="cpu", model_kwargs={"depth": 2})
    return vlm, vm


_LAUNCHER = """
import sys
import open_clip
open_clip.add_model_config(sys.argv.pop(1))  # the tiny test configuration, in every process
from {module} import main
sys.exit(main())
"""


def run_under_torchrun(tmp_path, module: str, procs: int, args: list[str], port: int):
    """Run ``{module}.main`` under torchrun with ``procs`` CPU processes (gloo, one thread each),
    the tiny CLIP configuration registered in each; returns the finished process, asserted
    successful. Skips when torchrun is not installed."""
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    if shutil.which("torchrun") is None and not (Path(sys.executable).parent / "torchrun").exists():
        pytest.skip("torchrun is not installed")
    configs = tmp_path / "configs"
    configs.mkdir(exist_ok=True)
    (configs / f"{TINY_CLIP}.json").write_text(json.dumps(TINY_CLIP_CONFIG))
    launcher = tmp_path / f"launch_{module.replace('.', '_')}.py"
    launcher.write_text(_LAUNCHER.format(module=module))
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(root)}
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(procs), "--master-addr",
         "127.0.0.1", "--master-port", str(port + os.getpid() % 1000 + procs), str(launcher), str(configs), *args],
        capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def interrupt_on_call(monkeypatch, owner, name: str, call: int = 2):
    """Replace ``owner.name`` by a wrapper that raises KeyboardInterrupt (Ctrl+C) on its ``call``-th call and
    runs the real function otherwise; returns the real function (to put back for a rerun)."""
    real = getattr(owner, name)
    calls = []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == call:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, interrupted)
    return real
