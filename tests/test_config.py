"""segmentation.config: the rule table of LPOSSConfig and PropagationSettings, its error types and
messages, and the same rules at the stage functions' keyword arguments."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from segmentation import LPOSSConfig, pipeline
from segmentation.config import LPOSS_CONSTRAINTS, PROPAGATION_CONSTRAINTS, PropagationSettings
from segmentation.stages import patch_propagation, pixel_propagation

# Per field: a value of the wrong type (a TypeError, with the words of its message) and a value of
# the right type that is refused (a ValueError, with its words).
BAD = {
    "short_side": (448.0, "a positive integer", 0, "a positive integer"),
    "long_side_cap": ("2048", "a positive integer", -1, "a positive integer"),
    "window": (True, "a positive integer", 0, "a positive integer"),
    "stride": (1.5, "a positive integer", 0, "a positive integer"),
    "sliding": (1, "True or False", None, ""),
    "k": (400.0, "a positive integer", 0, "a positive integer"),
    "gamma": ("3", "a number", 0.0, "in (0,"),
    "sigma": (None, "a number", -0.01, "in [0,"),
    "pix_dist_pow": (True, "a number", 0.0, "in (0,"),
    "alpha": ("0.9", "a number", 1.0, "in (0, 1)"),
    "tau": ([0.01], "a number", float("nan"), "in (0,"),
    "pixel_window": (13.0, "an odd integer >= 3", 12, "an odd integer >= 3"),
    "tol": (False, "a number", -1e-6, "in [0,"),
    "max_iter": (10.0, "a positive integer", 0, "a positive integer"),
    "pixel_refine": ("yes", "True or False", None, ""),
    "resize": (None, "a string", "pil", "one of ['torch', 'opencv']"),
}


def test_every_field_has_a_rule_and_a_bad_value():
    names = {f.name for f in dataclasses.fields(LPOSSConfig)}
    assert set(LPOSS_CONSTRAINTS) == names
    assert set(BAD) == names
    assert set(PROPAGATION_CONSTRAINTS) == {f.name for f in dataclasses.fields(PropagationSettings)}
    assert all(LPOSS_CONSTRAINTS[name] is rule for name, rule in PROPAGATION_CONSTRAINTS.items())


def _one_line(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("name", list(BAD))
def test_a_wrong_type_is_a_type_error_naming_the_field(name):
    wrong_type, words, _, _ = BAD[name]
    with pytest.raises(TypeError) as error:
        LPOSSConfig(**{name: wrong_type})
    assert _one_line(error).startswith(f"LPOSSConfig.{name} must be {words}")


@pytest.mark.parametrize("name", [n for n in BAD if BAD[n][2] is not None])
def test_a_wrong_value_is_a_value_error_naming_the_field(name):
    _, _, wrong_value, words = BAD[name]
    with pytest.raises(ValueError) as error:
        LPOSSConfig(**{name: wrong_value})
    message = _one_line(error)
    assert message.startswith(f"LPOSSConfig.{name} must be {words}"), message
    assert f"got {wrong_value!r}" in message


def test_the_cross_field_rule_and_the_accepted_edges():
    with pytest.raises(ValueError, match=r"^LPOSSConfig.long_side_cap \(447\) must be >= short_side \(448\)$"):
        LPOSSConfig(long_side_cap=447)
    edges = LPOSSConfig(short_side=1, long_side_cap=1, window=1, stride=1, k=1, sigma=0.0, tol=0.0, max_iter=1,
                        pixel_window=3, alpha=1e-9, sliding=False, pixel_refine=False, resize="opencv")
    assert edges.as_dict()["pixel_window"] == 3
    assert LPOSSConfig(**edges.as_dict()) == edges


def test_the_messages_the_demo_shows_are_unchanged():
    """The demo strips ``LPOSSConfig.`` and shows the rest (tests/test_demo.py pins these words)."""
    for kwargs, words in (({"pixel_window": 4}, "LPOSSConfig.pixel_window must be an odd integer >= 3, got 4"),
                          ({"alpha": 1.0}, "LPOSSConfig.alpha must be in (0, 1), got 1.0"),
                          ({"k": 0}, "LPOSSConfig.k must be a positive integer, got 0")):
        with pytest.raises(ValueError) as error:
            LPOSSConfig(**kwargs)
        assert str(error.value) == words


def test_propagation_settings_are_checked_and_shared():
    settings = LPOSSConfig(alpha=0.7, tol=1e-3, max_iter=4).propagation
    assert settings == PropagationSettings(alpha=0.7, tol=1e-3, max_iter=4)
    assert LPOSSConfig().propagation == PropagationSettings() == PropagationSettings(0.95, 1e-6, 10)
    assert settings.as_dict() == {"alpha": 0.7, "tol": 1e-3, "max_iter": 4}
    assert "propagation" not in LPOSSConfig().as_dict()
    assert dataclasses.replace(LPOSSConfig(), alpha=0.5).propagation.alpha == 0.5
    with pytest.raises(ValueError, match=r"^alpha must be in \(0, 1\), got 0$"):
        PropagationSettings(alpha=0)
    with pytest.raises(TypeError, match="^max_iter must be a positive integer"):
        PropagationSettings(max_iter=2.0)
    with pytest.raises(ValueError, match="^tol must be in"):
        PropagationSettings(tol=-1.0)


def test_lposs_config_is_still_importable_from_pipeline():
    import segmentation
    import segmentation.config

    assert pipeline.LPOSSConfig is segmentation.LPOSSConfig is segmentation.config.LPOSSConfig


@pytest.mark.parametrize("kwargs, error, words", [
    ({"k": 2.5}, TypeError, "k must be a positive integer"),
    ({"k": True}, TypeError, "k must be a positive integer"),
    ({"k": 0}, ValueError, "k must be a positive integer, got 0"),
    ({"gamma": 0.0}, ValueError, "gamma must be in (0,"),
    ({"sigma": -1.0}, ValueError, "sigma must be in [0,"),
    ({"pix_dist_pow": "1"}, TypeError, "pix_dist_pow must be a number"),
    ({"alpha": 1.0}, ValueError, "alpha must be in (0, 1)"),
    ({"tol": -1.0}, ValueError, "tol must be in [0,"),
    ({"max_iter": 0}, ValueError, "max_iter must be a positive integer"),
])
def test_patch_propagation_checks_its_settings_by_the_same_rules(kwargs, error, words):
    features = F.normalize(torch.randn(10, 4), dim=1)
    with pytest.raises(error) as raised:
        patch_propagation(features, torch.rand(10, 2), torch.rand(10, 2), **kwargs)
    assert _one_line(raised).startswith(words)


@pytest.mark.parametrize("kwargs, error, words", [
    ({"window": 4}, ValueError, "window must be an odd integer >= 3, got 4"),
    ({"window": 7.0}, TypeError, "window must be an odd integer >= 3"),
    ({"tau": 0.0}, ValueError, "tau must be in (0,"),
    ({"alpha": True}, TypeError, "alpha must be a number"),
    ({"max_iter": 1.5}, TypeError, "max_iter must be a positive integer"),
])
def test_pixel_propagation_checks_its_settings_by_the_same_rules(kwargs, error, words):
    with pytest.raises(error) as raised:
        pixel_propagation(torch.rand(3, 6, 7), torch.rand(2, 6, 7), **kwargs)
    assert _one_line(raised).startswith(words)


@pytest.mark.usefixtures("quiet_random_init")
def test_lposs_checks_its_settings_once_on_construction_not_again_per_image(small_encoders, monkeypatch):
    """LPOSSConfig is checked when built; LPOSS.predict runs both stages without checking the
    settings again (the stages' own checks are for their public keyword arguments)."""
    from conftest import SMALL_CONFIG_KWARGS
    from segmentation import LPOSS, config, stages

    vlm, vm = small_encoders
    model = LPOSS(vlm, vm, LPOSSConfig(**SMALL_CONFIG_KWARGS))

    def refuse(*args, **kwargs):
        raise AssertionError("a setting was checked again on the internal path")

    monkeypatch.setattr(stages, "check_settings", refuse)
    monkeypatch.setattr(config, "check_settings", refuse)
    monkeypatch.setattr(config.PropagationSettings, "__post_init__", refuse)
    assert model.predict(torch.rand(3, 40, 60), "a,b").shape == (2, 40, 60)
    with pytest.raises(AssertionError, match="checked again"):
        patch_propagation(F.normalize(torch.randn(10, 4), dim=1), torch.rand(10, 2), torch.rand(10, 2))


def test_the_stage_functions_defaults_are_the_configs():
    """The published defaults are written in LPOSSConfig, PropagationSettings and the stage functions'
    keyword arguments: each stage keyword's default is the config field of that name (pixel_propagation's
    ``window`` is ``pixel_window``), so the places cannot drift apart."""
    import inspect

    from segmentation.stages import patch_graph

    config, settings = LPOSSConfig(), PropagationSettings()
    field_of = {"window": "pixel_window"}
    checked = 0
    for function in (patch_propagation, pixel_propagation, patch_graph):
        for name, parameter in inspect.signature(function).parameters.items():
            if parameter.kind is not parameter.KEYWORD_ONLY or name == "backend":
                continue
            field = field_of.get(name, name) if function is pixel_propagation else name
            assert parameter.default == getattr(config, field), (function.__name__, name)
            if hasattr(settings, name):
                assert parameter.default == getattr(settings, name), (function.__name__, name)
            checked += 1
    assert checked == 7 + 5 + 4
