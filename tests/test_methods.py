"""The method registry: the published three, a method a user registers (seen by the CLI, the demo and
``build_segmenter``, and built by them), and refused name collisions."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from dataclasses import replace

import pytest

from conftest import SMALL_CONFIG_KWARGS, TINY_CLIP
from segmentation import LPOSS, LPOSSConfig, MaskCLIP, cli, methods
from segmentation.methods import Method, available_methods, get_method, register_method

VM = "timm:vit_small_patch16_224.dino"


@pytest.fixture()
def registry(monkeypatch):
    """A copy of the registry for one test: what it registers is gone afterwards."""
    monkeypatch.setattr(methods, "_REGISTRY", dict(methods._REGISTRY))


def _whole_image(vlm, vm, config):
    """A user's method: MaskCLIP on the whole image as one window (no sliding windows)."""
    _whole_image.calls.append((vlm, vm, config))
    return MaskCLIP(vlm, replace(config, sliding=False, pixel_refine=False))


_whole_image.calls = []
WHOLE = Method("whole", "Whole image", "MaskCLIP on the whole image at once", _whole_image, uses_vm=False)


def _method_choices(parser, command: str) -> list[str]:
    sub = next(a for a in parser._subparsers._group_actions if a.dest == "command").choices[command]
    return list(next(a for a in sub._actions if a.dest == "method").choices)


def test_the_published_methods_in_order():
    assert [m.name for m in available_methods()] == ["lposs+", "lposs", "maskclip"]
    assert [m.display_name for m in available_methods()] == ["LPOSS+", "LPOSS", "MaskCLIP"]
    assert [m.uses_vm for m in available_methods()] == [True, True, False]
    assert get_method("maskclip").display_name == "MaskCLIP"
    with pytest.raises(ValueError, match="unknown method 'sam'; expected one of lposs\\+, lposs, maskclip"):
        get_method("sam")


def test_the_builders_set_the_pixel_stage_and_leave_every_other_setting(small_encoders):
    vlm, vm = small_encoders
    config = LPOSSConfig(**SMALL_CONFIG_KWARGS, pixel_refine=False, alpha=0.7)
    plus = get_method("lposs+").build(vlm, vm, config)
    lposs = get_method("lposs").build(vlm, vm, replace(config, pixel_refine=True))
    maskclip = get_method("maskclip").build(vlm, vm, replace(config, pixel_refine=True))
    assert type(plus) is LPOSS and plus.config == replace(config, pixel_refine=True)
    assert type(lposs) is LPOSS and lposs.config == config
    assert type(maskclip) is MaskCLIP and maskclip.config == config and maskclip.vm is None
    assert plus.vlm is vlm and plus.vm is vm


def test_a_collision_is_refused_in_one_line(registry):
    with pytest.raises(ValueError, match="^a method named 'lposs' is registered already$"):
        register_method(Method("lposs", "Other", "another", _whole_image))
    with pytest.raises(ValueError, match="^a method displayed as 'MaskCLIP' is registered already$"):
        register_method(Method("other", "MaskCLIP", "another", _whole_image))
    with pytest.raises(TypeError, match="register_method takes a Method, got str"):
        register_method("whole")  # type: ignore[arg-type]
    register_method(WHOLE)
    with pytest.raises(ValueError, match="'whole' is registered already"):
        register_method(WHOLE)
    assert [m.name for m in available_methods()] == ["lposs+", "lposs", "maskclip", "whole"]


def test_a_registered_method_is_offered_by_every_command(registry):
    parser = cli.build_parser()
    for command in ("segment", "evaluate", "demo"):
        assert "whole" not in _method_choices(parser, command)
    register_method(WHOLE)
    parser = cli.build_parser()
    for command in ("segment", "evaluate", "demo"):
        assert _method_choices(parser, command) == ["lposs+", "lposs", "maskclip", "whole"]
    assert parser.parse_args(["evaluate", "--dataset", "voc", "--method", "whole"]).method == "whole"


def test_build_segmenter_builds_a_registered_method(registry, tiny_clip_configs, quiet_random_init, capsys):
    from segmentation.commands._common import build_segmenter

    register_method(WHOLE)
    _whole_image.calls.clear()
    model = build_segmenter("whole", f"open_clip:{TINY_CLIP}", "timm:no-such-model", device="cpu",
                            random_init=True, resize="opencv")
    (vlm, vm, config), = _whole_image.calls
    assert vm is None  # uses_vm=False: the --vm spec (here one that does not exist) is never built
    assert config == LPOSSConfig(resize="opencv")  # the published settings and the command's --resize
    assert type(model) is MaskCLIP and model.vlm is vlm and model.config.sliding is False
    assert model.config.resize == "opencv"
    with pytest.raises(ValueError, match="unknown method 'sam'"):
        build_segmenter("sam", f"open_clip:{TINY_CLIP}", VM, device="cpu", random_init=True)


def test_the_demo_lists_and_builds_a_registered_method(registry, small_encoders, tmp_path):
    from segmentation.demo import DemoApp, DemoInputError
    from segmentation.demo.app import method_names

    app = DemoApp(*small_encoders, LPOSSConfig(**SMALL_CONFIG_KWARGS), out_dir=tmp_path)
    with pytest.raises(DemoInputError, match="Unknown method 'Whole image'"):
        app.model("Whole image")
    register_method(WHOLE)
    assert method_names() == ("LPOSS+", "LPOSS", "MaskCLIP", "Whole image")
    _whole_image.calls.clear()
    model = app.model("Whole image", {"k": 7, "alpha": 0.6})
    (vlm, vm, config), = _whole_image.calls
    assert vlm is small_encoders[0] and vm is None
    assert config.k == 7 and config.alpha == 0.6 and config.window == SMALL_CONFIG_KWARGS["window"]
    assert type(model) is MaskCLIP and model.config.sliding is False
    assert app.stage_order("Whole image") == ["preprocess", "vlm", "vm", "text", "render"]


def test_the_demo_page_offers_a_registered_method(registry, small_encoders, tmp_path):
    pytest.importorskip("gradio")
    from segmentation.demo import DemoApp, build_app

    register_method(WHOLE)
    app = DemoApp(*small_encoders, LPOSSConfig(**SMALL_CONFIG_KWARGS), out_dir=tmp_path)
    blocks = build_app(app, method="Whole image")
    radio = next(b for b in blocks.blocks.values() if getattr(b, "elem_id", None) == "lposs-method")
    assert [value for _, value in radio.choices] == ["LPOSS+", "LPOSS", "MaskCLIP", "Whole image"]
    assert radio.value == "Whole image"
    assert "Whole image: MaskCLIP on the whole image at once" in radio.info
    blocks.close()
