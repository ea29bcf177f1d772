"""encoders: text embeddings (truncated pass, templates, synonyms, cache), weights, registry, inputs.

The dense features themselves are checked against explicit block arithmetic in
``test_encoder_reference.py``.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import encoders
from encoders import (
    OpenCLIPEncoder,
    RandomInitWarning,
    TextEmbeddings,
    TimmViTEncoder,
    VisionEncoder,
    VisionLanguageEncoder,
    WeightsUnavailableError,
)

pytestmark = pytest.mark.usefixtures("quiet_random_init")

TEMPLATES = ("a photo of a {}.", "a bad photo of the {}.", "{}")
SMALL_DINO = dict(model="vit_small_patch16_224.dino", model_kwargs={"depth": 2})


def tiny_clip(tiny_clip_configs, seed=0, **kwargs):
    kwargs.setdefault("templates", TEMPLATES)
    kwargs.setdefault("device", "cpu")
    torch.manual_seed(seed)
    return OpenCLIPEncoder(tiny_clip_configs[0], pretrained=None, **kwargs)


def reference_text(encoder, synonyms, templates):
    """§3 step by step through open_clip's own full-context encode_text, one synonym at a time."""
    rows = []
    for name in synonyms:
        tokens = encoder.tokenizer([t.replace("{}", name) for t in templates])
        prompts = F.normalize(encoder.model.encode_text(tokens), dim=-1)
        rows.append(F.normalize(prompts.mean(dim=0), dim=-1))
    return torch.stack(rows)


# --------------------------------------------------------------------------- text: exactness
@pytest.mark.parametrize("model", ["tiny", "ViT-B-16"])
def test_truncated_text_pass_equals_open_clip_full_context(model, tiny_clip_configs):
    """The tower is causal and read at the end-of-text token, so positions after the longest prompt
    of a batch change nothing: the truncated pass equals open_clip's encode_text at 77 tokens."""
    torch.manual_seed(0)
    if model == "tiny":
        encoder = tiny_clip(tiny_clip_configs, text_batch_size=3)
    else:
        encoder = OpenCLIPEncoder("ViT-B-16", pretrained=None, device="cpu", text_batch_size=3)
    assert encoder.truncate_text
    prompts = ["a", "a photo of a car.", "a photo of the large, heavily-armoured personnel carrier.",
               "sky", "an origami tree.", "a tattoo of the traffic light at the crossing of two roads."]
    fast = encoder.encode_prompts(prompts)
    with torch.inference_mode():
        full = F.normalize(encoder.model.encode_text(encoder.tokenizer(prompts)), dim=-1)
    assert encoder.tokenizer(prompts).shape[1] == 77
    torch.testing.assert_close(fast, full, atol=1e-5, rtol=0)


def test_full_pass_is_used_where_truncation_would_be_wrong(tiny_clip_configs):
    """A tower without a causal mask, read at the last position, sees the padding: the encoder
    falls back to the full pass (equal to open_clip), and truncating would indeed change it."""
    torch.manual_seed(0)
    encoder = OpenCLIPEncoder(tiny_clip_configs[1], pretrained=None, templates=TEMPLATES, device="cpu")
    assert not encoder.truncate_text
    prompts = ["a photo of a car.", "sky"]
    with torch.inference_mode():
        full = F.normalize(encoder.model.encode_text(encoder.tokenizer(prompts)), dim=-1)
        torch.testing.assert_close(encoder.encode_prompts(prompts), full, atol=1e-6, rtol=0)
        tokens = encoder.tokenizer(prompts)
        cut = encoder.model.text(tokens[:, :8])  # what a truncated pass would see
    assert (F.normalize(cut, dim=-1) - full).abs().max() > 1e-3
    with pytest.raises(ValueError, match="full context"):
        OpenCLIPEncoder(tiny_clip_configs[1], pretrained=None, device="cpu", truncate_text=True)


def test_encode_text_averages_templates_per_synonym(tiny_clip_configs):
    """§3: each synonym with every template, normalised, averaged, normalised again; `;` splits
    synonyms of one class and `class_index` maps each embedding to its class."""
    encoder = tiny_clip(tiny_clip_configs)
    result = encoder.encode_text(["road", " car ", "sky; cloud;mist"])
    assert isinstance(result, TextEmbeddings)
    assert result.class_names == ("road", "car", "sky;cloud;mist")
    assert result.synonyms == ("road", "car", "sky", "cloud", "mist")
    assert result.num_classes == 3
    assert result.class_index.dtype == torch.long
    assert result.class_index.tolist() == [0, 1, 2, 2, 2]
    assert result.embeddings.shape == (5, 48) and result.embeddings.dtype == torch.float32
    torch.testing.assert_close(result.embeddings.norm(dim=-1), torch.ones(5))
    with torch.inference_mode():
        expected = reference_text(encoder, result.synonyms, TEMPLATES)
    torch.testing.assert_close(result.embeddings, expected, atol=1e-5, rtol=0)


def test_default_templates_are_clips_80():
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

    templates = encoders._text.check_templates(None)
    assert len(templates) == 80
    assert encoders._text.render_prompts(templates, "cat") == [t("cat") for t in OPENAI_IMAGENET_TEMPLATES]


def test_comma_separated_string_is_a_class_list():
    classes, synonyms, index = encoders.split_class_names("road, car,sky;cloud")
    assert classes == ("road", "car", "sky;cloud")
    assert synonyms == ("road", "car", "sky", "cloud")
    assert index == [0, 1, 2, 2]


@pytest.mark.parametrize(
    "names, message",
    [
        ([], "empty"),
        (["road", ""], r"class_names\[1\].*is empty"),
        (["road", "sky;;cloud"], "empty synonym"),
        (["car", "road", "car"], "'car'.*given twice"),
        (["Car", "car"], "given twice"),
        (["sky;cloud", "cloud"], "also in class_names\\[0\\]"),
        (["sky;sky"], "same class"),
    ],
)
def test_bad_class_lists_are_rejected(names, message):
    with pytest.raises(ValueError, match=message):
        encoders.split_class_names(names)


def test_bad_templates_are_rejected(tiny_clip_configs):
    with pytest.raises(ValueError, match="no '\\{\\}'"):
        tiny_clip(tiny_clip_configs, templates=["a photo"])
    with pytest.raises(ValueError, match="empty"):
        tiny_clip(tiny_clip_configs, templates=[])


# --------------------------------------------------------------------------- text: cache
def count_prompts(encoder, monkeypatch):
    calls = []
    original = encoder.encode_prompts

    def counting(prompts):
        calls.append(len(prompts))
        return original(prompts)

    monkeypatch.setattr(encoder, "encode_prompts", counting)
    return calls


def test_cache_encodes_only_new_synonyms(tiny_clip_configs, monkeypatch, tmp_path):
    encoder = tiny_clip(tiny_clip_configs, text_cache=tmp_path)
    calls = count_prompts(encoder, monkeypatch)
    first = encoder.encode_text(["road", "car"])
    second = encoder.encode_text(["car", "road;street"])
    assert calls == [2 * len(TEMPLATES), 1 * len(TEMPLATES)]  # only "street" was new
    torch.testing.assert_close(second.embeddings[0], first.embeddings[1], atol=0, rtol=0)
    torch.testing.assert_close(second.embeddings[1], first.embeddings[0], atol=0, rtol=0)


def test_disk_cache_is_shared_by_the_same_weights_only(tiny_clip_configs, monkeypatch, tmp_path):
    """A new process with the same weights reads the file; other weights or templates never hit."""
    names = ["road", "car", "sky;cloud"]
    original = tiny_clip(tiny_clip_configs, seed=0, text_cache=tmp_path).encode_text(names)
    assert len(list(tmp_path.glob("*.npz"))) == 1

    same = tiny_clip(tiny_clip_configs, seed=0, text_cache=tmp_path)
    calls = count_prompts(same, monkeypatch)
    torch.testing.assert_close(same.encode_text(names).embeddings, original.embeddings, atol=0, rtol=0)
    assert calls == []

    other_weights = tiny_clip(tiny_clip_configs, seed=1, text_cache=tmp_path)
    calls = count_prompts(other_weights, monkeypatch)
    assert not torch.allclose(other_weights.encode_text(names).embeddings, original.embeddings)
    assert calls == [4 * len(TEMPLATES)]

    other_templates = tiny_clip(tiny_clip_configs, seed=0, text_cache=tmp_path, templates=["a {}"])
    calls = count_prompts(other_templates, monkeypatch)
    other_templates.encode_text(names)
    assert calls == [4]


def test_corrupt_cache_file_is_ignored_and_rewritten(tiny_clip_configs, tmp_path):
    encoder = tiny_clip(tiny_clip_configs, text_cache=tmp_path)
    expected = encoder.encode_text(["road", "car"]).embeddings
    (path,) = tmp_path.glob("*.npz")
    path.write_bytes(b"not a numpy file")
    fresh = tiny_clip(tiny_clip_configs, text_cache=tmp_path)
    torch.testing.assert_close(fresh.encode_text(["road", "car"]).embeddings, expected, atol=1e-6, rtol=0)
    with np.load(path, allow_pickle=False) as data:  # rewritten, readable again
        assert data["embeddings"].shape == (2, 48)


def test_cache_off_writes_nothing(tiny_clip_configs, tmp_path, monkeypatch):
    monkeypatch.setenv("LPOSS_CACHE_DIR", str(tmp_path))
    tiny_clip(tiny_clip_configs, text_cache=False).encode_text(["road"])
    assert list(tmp_path.rglob("*")) == []
    tiny_clip(tiny_clip_configs).encode_text(["road"])  # default: under $LPOSS_CACHE_DIR
    assert len(list((tmp_path / "text-embeddings").glob("*.npz"))) == 1


def test_unwritable_cache_costs_speed_not_results(tiny_clip_configs, tmp_path, caplog):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    encoder = tiny_clip(tiny_clip_configs, text_cache=blocker)
    result = encoder.encode_text(["road", "car"])
    assert result.embeddings.shape == (2, 48)
    assert "could not write the text-embedding cache" in caplog.text
    assert list(tmp_path.iterdir()) == [blocker]


# --------------------------------------------------------------------------- weights
def test_random_weights_warn(tiny_clip_configs):
    with warnings.catch_warnings():
        warnings.simplefilter("error", RandomInitWarning)
        with pytest.raises(RandomInitWarning, match="random weights"):
            OpenCLIPEncoder(tiny_clip_configs[0], pretrained=None, device="cpu")
        with pytest.raises(RandomInitWarning, match="random weights"):
            TimmViTEncoder(SMALL_DINO["model"], pretrained=False, device="cpu", model_kwargs={"depth": 2})


def save_checkpoint(model, path):
    """A state dict as users have them: safetensors, or torch.save for .pt/.pth/.bin."""
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(state, str(path))
    else:
        torch.save(state, path)


@pytest.mark.parametrize("suffix", [".safetensors", ".pt", ".bin"])
def test_open_clip_local_checkpoint(tiny_clip_configs, tmp_path, suffix):
    """Local files are how offline users load weights: the same weights give the same outputs."""
    source = tiny_clip(tiny_clip_configs, seed=3)
    path = tmp_path / f"weights{suffix}"
    save_checkpoint(source.model, path)
    loaded = OpenCLIPEncoder(tiny_clip_configs[0], pretrained=path, templates=TEMPLATES, device="cpu")
    images = torch.rand(1, 3, 64, 64)
    torch.testing.assert_close(loaded.dense_features(images), source.dense_features(images), atol=0, rtol=0)
    torch.testing.assert_close(loaded.encode_text(["car"]).embeddings, source.encode_text(["car"]).embeddings)


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_timm_local_checkpoint(tmp_path, suffix):
    torch.manual_seed(4)
    source = TimmViTEncoder(pretrained=None, device="cpu", **SMALL_DINO)
    path = tmp_path / f"dino{suffix}"
    save_checkpoint(source.model, path)
    loaded = TimmViTEncoder(pretrained=str(path), device="cpu", **SMALL_DINO)
    images = torch.rand(2, 3, 48, 80)
    torch.testing.assert_close(loaded.dense_features(images), source.dense_features(images), atol=0, rtol=0)


def test_missing_file_is_one_clear_error(tiny_clip_configs, tmp_path):
    missing = tmp_path / "nowhere.safetensors"
    with pytest.raises(WeightsUnavailableError, match="does not exist") as info:
        OpenCLIPEncoder(tiny_clip_configs[0], pretrained=missing, device="cpu")
    assert tiny_clip_configs[0] in str(info.value) and str(missing) in str(info.value)
    with pytest.raises(WeightsUnavailableError, match="vit_small_patch16_224.dino.*does not exist"):
        TimmViTEncoder(pretrained=str(missing), device="cpu", **SMALL_DINO)


def test_file_of_another_architecture_is_one_clear_error(tiny_clip_configs, tmp_path):
    path = tmp_path / "other.pt"
    torch.save(tiny_clip(tiny_clip_configs).model.state_dict(), path)
    with pytest.raises(WeightsUnavailableError, match="could not be loaded into this architecture") as info:
        OpenCLIPEncoder(tiny_clip_configs[1], pretrained=path, device="cpu")
    assert info.value.__cause__ is None and "\n" not in str(info.value)
    with pytest.raises(WeightsUnavailableError, match="could not be loaded into this architecture"):
        TimmViTEncoder(pretrained=str(path), device="cpu", **SMALL_DINO)


def test_offline_hub_weights_are_one_clear_error():
    """Offline (HF_HUB_OFFLINE=1 in the tests, no socket allowed): the message says what was
    tried and how to pass a local file."""
    with pytest.raises(WeightsUnavailableError) as info:
        OpenCLIPEncoder("ViT-B-16", pretrained="laion2b_s34b_b88k", device="cpu")
    message = str(info.value)
    assert "ViT-B-16" in message and "laion2b_s34b_b88k" in message
    assert "Hugging Face Hub" in message and "open_clip:ViT-B-16@/path/to/" in message
    info = pytest.raises(WeightsUnavailableError, TimmViTEncoder, "vit_small_patch16_224.dino", pretrained=True)
    assert "timm/vit_small_patch16_224.dino" in str(info.value)
    assert "timm:vit_small_patch16_224.dino@/path/to/" in str(info.value)


def test_unknown_models_and_tags_are_clear_errors():
    with pytest.raises(ValueError, match="unknown open_clip model 'ViT-Q-99'"):
        OpenCLIPEncoder("ViT-Q-99", pretrained=None, device="cpu")
    with pytest.raises(ValueError, match="no pretrained tag 'nope'.*laion2b_s34b_b88k"):
        OpenCLIPEncoder("ViT-B-16", pretrained="nope", device="cpu")
    with pytest.raises(ValueError, match="unknown timm model"):
        TimmViTEncoder("vit_nothing_here", pretrained=None, device="cpu")
    with pytest.raises(ValueError, match="feature must be one of"):
        TimmViTEncoder(pretrained=None, feature="z", device="cpu", **SMALL_DINO)
    with pytest.raises(TypeError, match="feature must be a str"):
        TimmViTEncoder(pretrained=None, feature=1, device="cpu", **SMALL_DINO)


def test_resnet_clip_is_refused():
    with pytest.raises(ValueError, match="cannot give MaskCLIP dense features.*ModifiedResNet"):
        OpenCLIPEncoder("RN50", pretrained=None, device="cpu")


# --------------------------------------------------------------------------- images
def test_images_are_validated(tiny_clip_configs):
    encoder = tiny_clip(tiny_clip_configs)
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        encoder.dense_features(torch.rand(3, 64, 64))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        encoder.dense_features(torch.rand(1, 4, 64, 64))
    with pytest.raises(TypeError, match="float"):
        encoder.dense_features(torch.zeros(1, 3, 64, 64, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        encoder.dense_features(torch.rand(1, 3, 64, 64) * 255)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        encoder.dense_features(torch.full((1, 3, 64, 64), float("nan")))


@pytest.mark.parametrize("make", ["clip", "dino"])
def test_padding_is_black_before_normalisation(make, tiny_clip_configs):
    """A 50 x 70 image gives the features of the same image padded with zeros to 64 x 80."""
    encoder = (tiny_clip(tiny_clip_configs) if make == "clip"
               else TimmViTEncoder(pretrained=None, device="cpu", **SMALL_DINO))
    image = torch.rand(1, 3, 50, 70)
    padded = F.pad(image, (0, 10, 0, 14))
    features = encoder.dense_features(image)
    assert features.shape[1:3] == (4, 5)
    torch.testing.assert_close(features, encoder.dense_features(padded), atol=0, rtol=0)


@pytest.mark.parametrize("make", ["clip", "dino"])
def test_batches_in_chunks_and_deterministic(make, tiny_clip_configs):
    if make == "clip":
        one, four = tiny_clip(tiny_clip_configs, batch_size=1), None
        four = tiny_clip(tiny_clip_configs, batch_size=4)
    else:
        torch.manual_seed(0)
        one = TimmViTEncoder(pretrained=None, device="cpu", batch_size=1, **SMALL_DINO)
        torch.manual_seed(0)
        four = TimmViTEncoder(pretrained=None, device="cpu", batch_size=4, **SMALL_DINO)
    images = torch.rand(5, 3, 64, 80)
    a = one.dense_features(images)
    torch.testing.assert_close(a, four.dense_features(images), atol=1e-5, rtol=0)
    assert torch.equal(a, one.dense_features(images))
    assert not a.requires_grad


# --------------------------------------------------------------------------- protocols and registry
class ColourHistogramEncoder:
    """A third-party encoder: no base class, just the protocol's members."""

    patch_size = 8

    def __init__(self, model="rgb", pretrained=None, **kwargs):
        self.model, self.pretrained, self.kwargs = model, pretrained, kwargs

    def dense_features(self, images):
        pooled = F.avg_pool2d(images, self.patch_size, ceil_mode=True)
        return F.normalize(pooled.permute(0, 2, 3, 1) + 1e-6, dim=-1)


def test_built_in_encoders_satisfy_the_protocols(tiny_clip_configs):
    clip = tiny_clip(tiny_clip_configs)
    dino = TimmViTEncoder(pretrained=None, device="cpu", **SMALL_DINO)
    assert isinstance(clip, VisionLanguageEncoder) and isinstance(clip, VisionEncoder)
    assert isinstance(dino, VisionEncoder) and not isinstance(dino, VisionLanguageEncoder)
    assert isinstance(ColourHistogramEncoder(), VisionEncoder)


def test_create_round_trips_specs(tiny_clip_configs, tmp_path):
    source = tiny_clip(tiny_clip_configs, seed=5)
    path = tmp_path / "clip.pt"
    torch.save(source.model.state_dict(), path)
    clip = encoders.create(f"open_clip:{tiny_clip_configs[0]}@{path}", device="cpu", templates=TEMPLATES)
    assert isinstance(clip, OpenCLIPEncoder) and clip.source.kind == "file"
    images = torch.rand(1, 3, 64, 64)
    torch.testing.assert_close(clip.dense_features(images), source.dense_features(images), atol=0, rtol=0)

    dino = encoders.create("timm:vit_small_patch16_224.dino", pretrained=None, device="cpu", feature="k",
                           model_kwargs={"depth": 2})
    assert isinstance(dino, TimmViTEncoder) and dino.feature == "k" and dino.source.kind == "random"
    random_clip = encoders.create("open_clip:ViT-B-16@laion2b_s34b_b88k", pretrained=None, device="cpu")
    assert random_clip.source.kind == "random"  # a keyword overrides the spec's weights (--random-init)
    assert encoders.create(dino) is dino
    assert {"open_clip", "timm"} <= set(encoders.registered())


def test_register_plugs_in_a_third_party_encoder():
    encoders.register("colour-test", ColourHistogramEncoder)
    try:
        made = encoders.create("colour-test:rgb@/weights/x.pt", extra=1)
        assert isinstance(made, ColourHistogramEncoder) and isinstance(made, VisionEncoder)
        assert (made.model, made.pretrained, made.kwargs) == ("rgb", "/weights/x.pt", {"extra": 1})
        assert encoders.create("colour-test:rgb").pretrained is None
        features = made.dense_features(torch.rand(2, 3, 20, 17))
        assert features.shape == (2, 3, 3, 3)
        with pytest.raises(ValueError, match="already registered"):
            encoders.register("colour-test", lambda model, **kw: None)
        encoders.register("colour-test", ColourHistogramEncoder)  # the same factory again is fine
    finally:
        encoders._registry._FACTORIES.pop("colour-test", None)


@pytest.mark.parametrize(
    "spec, message",
    [
        ("ViT-B-16", "has no prefix"),
        ("nothing:model", "unknown encoder 'nothing'.*open_clip"),
        ("open_clip:", "names no model"),
        ("open_clip:ViT-B-16@", "empty weights"),
    ],
)
def test_bad_specs_are_clear_errors(spec, message):
    with pytest.raises(ValueError, match=message):
        encoders.create(spec)


def test_register_rejects_bad_names():
    with pytest.raises(ValueError, match="without ':'"):
        encoders.register("a:b", ColourHistogramEncoder)
    with pytest.raises(ValueError, match="non-empty"):
        encoders.register("", ColourHistogramEncoder)
    with pytest.raises(TypeError, match="encoder name must be a string, got int"):
        encoders.register(3, ColourHistogramEncoder)


# --------------------------------------------------------------------------- CUDA
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA is not available here")


@cuda
@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16", "half"])
def test_cuda_features_match_cpu(precision, tiny_clip_configs):
    """Every precision on CUDA against float32 on CPU, the same weights; ``"half"`` is the
    deprecated ``half=True``, which must give fp16 exactly."""
    option = {"half": True} if precision == "half" else {"precision": precision}
    tol = 1e-4 if precision == "fp32" else 2e-2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.manual_seed(0)
        cpu = OpenCLIPEncoder("ViT-B-16", pretrained=None, device="cpu")
        gpu = OpenCLIPEncoder("ViT-B-16", pretrained=None, device="cuda", **option)
        torch.manual_seed(1)
        dino_cpu = TimmViTEncoder(pretrained=None, device="cpu")
        dino_gpu = TimmViTEncoder(pretrained=None, device="cuda", **option)
    assert gpu.precision == dino_gpu.precision == ("fp16" if precision == "half" else precision)
    gpu.model.load_state_dict(cpu.model.state_dict())  # cast to each parameter's own dtype
    dino_gpu.model.load_state_dict(dino_cpu.model.state_dict())
    images = torch.rand(2, 3, 224, 160)
    features = gpu.dense_features(images.cuda())
    assert features.dtype == torch.float32 and features.is_cuda
    torch.testing.assert_close(features.cpu(), cpu.dense_features(images), atol=tol, rtol=0)
    names = ["car", "sky;cloud"]
    torch.testing.assert_close(gpu.encode_text(names).embeddings.cpu(), cpu.encode_text(names).embeddings,
                               atol=tol, rtol=0)
    torch.testing.assert_close(dino_gpu.dense_features(images.cuda()).cpu(), dino_cpu.dense_features(images),
                               atol=tol, rtol=0)


def test_half_needs_cuda():
    with pytest.warns(DeprecationWarning), pytest.raises(ValueError, match="precision='fp16' needs a CUDA device"):
        TimmViTEncoder(pretrained=None, device="cpu", half=True, **SMALL_DINO)


def test_other_patch_sizes_and_pos_embedding_resizing():
    """Any open_clip ViT: patch 32 gives a 7 x 7 grid at 224 and resizes its positional
    embedding for other grids (the reference tests check the values on patch 16)."""
    encoder = OpenCLIPEncoder("ViT-B-32", pretrained=None, device="cpu")
    assert encoder.patch_size == 32
    assert encoder.dense_features(torch.rand(1, 3, 224, 224)).shape == (1, 7, 7, 512)
    features = encoder.dense_features(torch.rand(1, 3, 256, 170))
    assert features.shape == (1, 8, 6, 512)
    torch.testing.assert_close(features.norm(dim=-1), torch.ones(1, 8, 6))


# --------------------------------------------------------------------------------------------- shared pieces
def test_repr_names_model_weights_options_device_and_precision(tiny_clip_configs):
    clip = tiny_clip(tiny_clip_configs)
    dino = TimmViTEncoder(pretrained=None, device="cpu", feature="k", **SMALL_DINO)
    assert repr(clip) == (f"OpenCLIPEncoder(model={tiny_clip_configs[0]!r}, weights='random weights', "
                          f"templates={len(TEMPLATES)}, device='cpu', precision='fp32')")
    assert repr(dino) == ("TimmViTEncoder(model='vit_small_patch16_224.dino', weights='random weights', "
                          "feature='k', device='cpu', precision='fp32')")


def test_require_imports_an_optional_dependency_or_names_its_extra(tmp_path, monkeypatch):
    from encoders._optional import MissingDependencyError, require

    assert require("json.decoder", feature="reading settings").__name__ == "json.decoder"
    with pytest.raises(MissingDependencyError) as error:
        require("lposs_no_such_module", feature='resize="opencv"', extra="opencv", package="opencv-python-headless")
    message = str(error.value)
    assert isinstance(error.value, ImportError) and "\n" not in message
    assert message.startswith('resize="opencv" needs opencv-python-headless, an optional dependency: ')
    assert 'pip install opencv-python-headless (or pip install "lposs[opencv]"' in message
    assert 'pip install -e ".[opencv]"' in message
    with pytest.raises(ImportError, match=r"^the thing needs lposs_no_such_module, an optional dependency: "
                                          r"pip install lposs_no_such_module$"):
        require("lposs_no_such_module.sub", feature="the thing")
    # installed, but one of its own dependencies is missing: that module is named too
    (tmp_path / "lposs_broken_module.py").write_text("import lposs_missing_dependency\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ImportError, match=r"needs lposs_broken_module, an optional dependency "
                                          r"\(No module named 'lposs_missing_dependency'\): "
                                          r'pip install lposs_broken_module \(or pip install "lposs\[demo\]"'):
        require("lposs_broken_module", feature="the demo", extra="demo")
