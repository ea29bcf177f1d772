"""encoders' ``precision``: fp32 untouched, bf16 end to end and close to fp32, fp16 CUDA only, the
slow-bf16 warning, the text cache per precision, and the option through create / from_pretrained / CLI."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F

import encoders
from encoders import OpenCLIPEncoder, TimmViTEncoder, _precision
from segmentation import cli
from segmentation.pipeline import LPOSS, LPOSSConfig

pytestmark = pytest.mark.usefixtures("quiet_random_init")

TEMPLATES = ("a photo of a {}.", "{}")
SMALL_DINO = dict(model="vit_small_patch16_224.dino", model_kwargs={"depth": 2})
NAMES = ["road", "car", "sky;cloud", "a tall building"]


@pytest.fixture(autouse=True)
def bf16_units(monkeypatch):
    """Tests run as on a CPU with bf16 units (this one has AVX512-BF16) unless they say otherwise."""
    monkeypatch.setattr(_precision, "cpu_has_bf16", lambda: True)


def clip(tiny_clip_configs, precision="fp32", seed=0, **kwargs):
    torch.manual_seed(seed)
    return OpenCLIPEncoder(tiny_clip_configs[0], pretrained=None, device="cpu", templates=TEMPLATES,
                           text_cache=False, precision=precision, **kwargs)


def dino(precision="fp32", seed=1, feature="v"):
    torch.manual_seed(seed)
    return TimmViTEncoder(pretrained=None, device="cpu", feature=feature, precision=precision, **SMALL_DINO)


def images(seed=0, batch=2, height=96, width=80):
    return torch.rand(batch, 3, height, width, generator=torch.Generator().manual_seed(seed))


def floating_dtypes(model: torch.nn.Module) -> set[torch.dtype]:
    tensors = [*model.parameters(), *model.buffers()]
    return {t.dtype for t in tensors if t.is_floating_point()}


def input_dtypes(modules) -> list[torch.dtype]:
    """Run-time dtypes of the first input of each module, recorded by forward hooks."""
    seen: list[torch.dtype] = []
    handles = [m.register_forward_hook(lambda _m, args, _out: seen.append(args[0].dtype)) for m in modules]
    return seen, handles


def assert_close_to_fp32(low: torch.Tensor, exact: torch.Tensor, min_cosine: float) -> None:
    """bf16 keeps 8 bits of mantissa (relative step 2**-8): unit features agree to a cosine near 1
    and to a relative Frobenius error of a few per cent, but not bitwise."""
    assert low.dtype == torch.float32 and low.shape == exact.shape
    cosine = F.cosine_similarity(low, exact, dim=-1)
    assert cosine.min() >= min_cosine, cosine.min()
    assert (low - exact).norm() / exact.norm() < 0.05
    assert not torch.equal(low, exact)  # bf16 really ran


# --------------------------------------------------------------------------- fp32: exactly as before
def test_fp32_is_the_default_and_casts_nothing(tiny_clip_configs):
    default, explicit = clip(tiny_clip_configs), clip(tiny_clip_configs, "fp32")
    assert default.precision == "fp32" and default.dtype == torch.float32
    assert floating_dtypes(default.model) == {torch.float32}
    x = images()
    assert torch.equal(default.dense_features(x), explicit.dense_features(x))
    assert torch.equal(default.encode_text(NAMES).embeddings, explicit.encode_text(NAMES).embeddings)
    vm = dino()
    assert vm.precision == "fp32" and floating_dtypes(vm.model) == {torch.float32}
    assert torch.equal(vm.dense_features(x), dino("fp32").dense_features(x))


def test_fp32_clip_is_bitwise_the_plain_module_chain(tiny_clip_configs):
    """fp32 is the computation the encoder always did, bit for bit: open_clip's own modules in the
    MaskCLIP order (§2), with no cast anywhere."""
    from encoders._images import pad_and_normalize

    enc = clip(tiny_clip_configs)
    visual = enc.model.visual
    grid = tuple(visual.grid_size)  # the model's own grid: the positional embedding is used as it is
    size = (grid[0] * enc.patch_size, grid[1] * enc.patch_size)
    assert visual.transformer.batch_first
    x = pad_and_normalize(images(batch=2, height=size[0], width=size[1]), enc.patch_size, enc.mean, enc.std,
                          torch.float32)
    with torch.inference_mode():
        t = visual.conv1(x)
        b, width = t.shape[:2]
        t = torch.cat([visual.class_embedding.expand(b, 1, width), t.flatten(2).transpose(1, 2)], dim=1)
        t = visual.ln_pre(t + visual.positional_embedding)
        for block in visual.transformer.resblocks[:-1]:
            t = block(t)
        last = visual.transformer.resblocks[-1]
        v = F.linear(last.ln_1(t), last.attn.in_proj_weight[2 * width:], last.attn.in_proj_bias[2 * width:])
        z = t + last.attn.out_proj(v)
        z = z + last.mlp(last.ln_2(z))
        plain = F.normalize(visual.ln_post(z[:, 1:]) @ visual.proj, dim=-1).reshape(b, *grid, -1)
    assert torch.equal(enc.dense_features(images(batch=2, height=size[0], width=size[1])), plain)


def test_fp32_dino_sees_only_float32():
    vm = dino()
    modules = [m for m in vm.model.modules() if not list(m.children())]  # every leaf module
    seen, handles = input_dtypes(modules)
    try:
        vm.dense_features(images())
    finally:
        for handle in handles:
            handle.remove()
    assert seen and set(seen) == {torch.float32}


# --------------------------------------------------------------------------- bf16: end to end, close to fp32
def test_clip_bf16_runs_end_to_end_and_is_close_to_fp32(tiny_clip_configs):
    exact, low = clip(tiny_clip_configs), clip(tiny_clip_configs, "bf16")
    assert low.precision == "bf16" and low.dtype == torch.bfloat16
    assert floating_dtypes(low.model) == {torch.bfloat16}  # every weight, text tower included
    last = low.model.visual.transformer.resblocks[-1]
    # the MaskCLIP value path (ln_1, out_proj, mlp of the last block), ln_post and the text tower
    watched = [last.ln_1, last.attn.out_proj, last.mlp, low.model.visual.ln_post, low.model.ln_final]
    seen, handles = input_dtypes(watched)
    x = images()
    try:
        features = low.dense_features(x)
        text = low.encode_text(NAMES).embeddings
    finally:
        for handle in handles:
            handle.remove()
    assert len(seen) == len(watched) and set(seen) == {torch.bfloat16}
    assert_close_to_fp32(features, exact.dense_features(x), min_cosine=0.999)
    torch.testing.assert_close(features.norm(dim=-1), torch.ones(features.shape[:-1]))
    assert_close_to_fp32(text, exact.encode_text(NAMES).embeddings, min_cosine=0.999)


@pytest.mark.parametrize("feature", ["v", "x"])
def test_dino_bf16_runs_end_to_end_and_is_close_to_fp32(feature):
    exact, low = dino(feature=feature), dino("bf16", feature=feature)
    assert floating_dtypes(low.model) == {torch.bfloat16}
    seen, handles = input_dtypes([low.model.blocks[0], low.model.blocks[-1].norm1])
    x = images(height=100, width=150)  # padded, and a grid that resamples the positional embedding
    try:
        features = low.dense_features(x)
    finally:
        for handle in handles:
            handle.remove()
    assert set(seen) == {torch.bfloat16}
    assert_close_to_fp32(features, exact.dense_features(x), min_cosine=0.999)


def test_bf16_text_is_cached_apart_from_fp32(tiny_clip_configs, tmp_path):
    """The text cache's key carries the precision: a bf16 encoder never serves fp32 embeddings
    (and the other way round), each finds its own on disk."""
    def encoder(precision):
        torch.manual_seed(0)
        return OpenCLIPEncoder(tiny_clip_configs[0], pretrained=None, device="cpu", templates=TEMPLATES,
                               text_cache=tmp_path, precision=precision)

    exact = encoder("fp32").encode_text(NAMES).embeddings
    low_encoder = encoder("bf16")
    low = low_encoder.encode_text(NAMES).embeddings
    assert not torch.equal(low, exact)
    assert len(list(tmp_path.glob("*.npz"))) == 2 and "bfloat16" in low_encoder._embedding_cache().namespace
    again = encoder("bf16")
    again.encode_prompts = None  # served from the disk cache: encoding anything would fail
    assert torch.equal(again.encode_text(NAMES).embeddings, low)


def test_bf16_pipeline_scores_are_float32_and_agree_with_fp32(small_encoders, tiny_clip_configs):
    """The networks in bf16, propagation as in fp32: float32 scores, nearly the same labels."""
    vlm, vm = small_encoders
    torch.manual_seed(0)
    low_vlm = OpenCLIPEncoder(tiny_clip_configs[0], pretrained=None, device="cpu", templates=["a {}"],
                              text_cache=False, precision="bf16")
    low_vlm.model.load_state_dict(vlm.model.state_dict())  # the same weights, rounded to bf16
    low_vm = TimmViTEncoder("vit_small_patch16_224.dino", pretrained=None, device="cpu",
                            model_kwargs={"depth": 2}, precision="bf16")
    low_vm.model.load_state_dict(vm.model.state_dict())
    config = LPOSSConfig(short_side=96, long_side_cap=512, window=64, stride=32, k=30)
    image = torch.rand(3, 96, 128, generator=torch.Generator().manual_seed(3))
    exact = LPOSS(vlm, vm, config).predict(image, NAMES)
    low = LPOSS(low_vlm, low_vm, config).predict(image, NAMES)
    assert low.dtype == torch.float32 and low.shape == exact.shape
    agreement = (low.argmax(0) == exact.argmax(0)).float().mean().item()
    assert agreement >= 0.95, agreement  # tiny random networks: a looser bound than the full models' 99%
    assert not torch.equal(low, exact)


# --------------------------------------------------------------------------- errors, fp16, the half alias
@pytest.mark.parametrize("precision", ["fp64", "float32", "BF16", None, 16])
def test_unknown_precision_is_one_clear_error(precision):
    # the validators' rule: an unknown name is a ValueError, a value that is no name a TypeError
    expected = ValueError if isinstance(precision, str) else TypeError
    with pytest.raises(expected, match=r"^precision must be (a str, )?one of \['fp32', 'bf16', 'fp16'\], got") as error:
        dino(precision)
    assert "\n" not in str(error.value)


def test_fp16_needs_cuda():
    with pytest.raises(ValueError, match=r"precision='fp16' needs a CUDA device \(got device='cpu'\)"):
        dino("fp16")


def test_half_is_a_deprecated_alias_of_fp16(tiny_clip_configs):
    with pytest.warns(DeprecationWarning, match="use precision='fp16'"), \
            pytest.raises(ValueError, match="precision='fp16' needs a CUDA device"):
        TimmViTEncoder(pretrained=None, device="cpu", half=True, **SMALL_DINO)
    with pytest.warns(DeprecationWarning), pytest.raises(ValueError, match="contradicts precision='bf16'"):
        clip(tiny_clip_configs, "bf16", half=True)
    with pytest.warns(DeprecationWarning):
        assert _precision.resolve_precision("fp32", True, torch.device("cuda")) == ("fp16", torch.float16)


def test_cuda_precisions_resolve_without_a_gpu(monkeypatch):
    """What a CUDA device gets (checked without one): fp16 and bf16 dtypes; bf16 on a GPU without
    bf16 units (before Ampere) warns."""
    cuda = torch.device("cuda")
    assert _precision.resolve_precision("fp16", False, cuda) == ("fp16", torch.float16)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _precision.resolve_precision("bf16", False, cuda) == ("bf16", torch.bfloat16)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: False)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla V100")
    with pytest.warns(UserWarning, match=r"this GPU \(Tesla V100\) has no bfloat16 units"):
        _precision.resolve_precision("bf16", False, cuda)


# --------------------------------------------------------------------------- the slow-bf16 warning
def test_bf16_on_a_cpu_without_bf16_units_warns(monkeypatch):
    monkeypatch.setattr(_precision, "cpu_has_bf16", lambda: False)
    with pytest.warns(UserWarning, match=r"precision='bf16': this CPU .* has no bfloat16 units"):
        dino("bf16")
    for known in (True, None):  # bf16 units, or a CPU that cannot be probed: no warning
        monkeypatch.setattr(_precision, "cpu_has_bf16", lambda known=known: known)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            warnings.filterwarnings("ignore", message=".*random weights.*")
            dino("bf16")


@pytest.mark.parametrize(
    "cpuinfo, expected",
    [
        ("processor\t: 0\nflags\t\t: fpu sse avx2 avx512f avx512_bf16 avx512_vnni\n", True),  # Zen 4
        ("flags\t\t: fpu avx512f amx_bf16 amx_tile\n", True),  # Sapphire Rapids
        ("flags\t\t: fpu sse avx2 avx512f avx512_vnni\n", False),  # Skylake-SP: AVX-512, no bf16
        ("processor\t: 0\nFeatures\t: fp asimd sve bf16 i8mm\n", True),  # Arm (Graviton 3)
        ("processor\t: 0\nFeatures\t: fp asimd evtstrm\n", False),  # Arm (Graviton 2)
        ("processor\t: 0\n", None),  # no flags: unknown
    ],
)
def test_cpu_bf16_probe_reads_the_cpu_flags(cpuinfo, expected, tmp_path):
    path = tmp_path / "cpuinfo"
    path.write_text(cpuinfo)
    assert _precision.probe_cpu_bf16(path) is expected


def test_this_cpu_is_probed_from_its_flags():
    """The real probe on this machine agrees with the flags /proc/cpuinfo lists."""
    from pathlib import Path

    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.is_file():
        pytest.skip("no /proc/cpuinfo here")
    words = set(cpuinfo.read_text().split())
    assert _precision.probe_cpu_bf16(cpuinfo) is bool(words & {"avx512_bf16", "amx_bf16", "bf16"})


# --------------------------------------------------------------------------- create, from_pretrained, CLI
def test_create_passes_precision_on_and_checks_it(tiny_clip_configs):
    low = encoders.create(f"open_clip:{tiny_clip_configs[0]}", pretrained=None, device="cpu", precision="bf16",
                          templates=TEMPLATES, text_cache=False)
    assert low.precision == "bf16" and floating_dtypes(low.model) == {torch.bfloat16}
    assert encoders.create(low, precision="bf16") is low
    with pytest.raises(ValueError, match="the encoder given runs in 'bf16'"):
        encoders.create(low, precision="fp32")
    with pytest.raises(ValueError, match="precision must be one of"):
        encoders.create("timm:no_such_model", precision="half")  # checked before anything is built


def test_from_pretrained_precision(tiny_clip_configs):
    vlm, vm = f"open_clip:{tiny_clip_configs[0]}", "timm:vit_small_patch16_224.dino"
    model = LPOSS.from_pretrained(vlm, vm, random_init=True, device="cpu", precision="bf16")  # offline: random weights
    assert model.vlm.precision == model.vm.precision == "bf16"
    assert LPOSS.from_pretrained(vlm, vm, random_init=True, device="cpu").vm.precision == "fp32"  # offline
    with pytest.raises(ValueError, match="precision='fp16' needs a CUDA device"):
        LPOSS.from_pretrained(vlm, vm, random_init=True, device="cpu", precision="fp16")  # offline: random weights


def test_fp32_leaves_encoders_without_the_option_alone():
    """A registered encoder without a precision argument still works at the default."""
    class Plain:
        patch_size = 16

        def __init__(self, model, pretrained=None, device=None):
            self.device = device

        def dense_features(self, images):
            return torch.zeros(images.shape[0], 1, 1, 3)

        def encode_text(self, class_names):
            raise NotImplementedError

    encoders.register("plain-precision-test", Plain, overwrite=True)
    model = LPOSS.from_pretrained("plain-precision-test:a", "plain-precision-test:b", device="cpu")  # offline fake
    assert isinstance(model.vlm, Plain) and isinstance(model.vm, Plain)


@pytest.mark.parametrize("command", [["segment"], ["evaluate", "--dataset", "voc"], ["demo"]])
def test_the_three_commands_take_precision(command):
    parser = cli.build_parser()
    assert parser.parse_args(command).precision == "fp32"
    assert parser.parse_args([*command, "--precision", "bf16"]).precision == "bf16"
    with pytest.raises(SystemExit):
        parser.parse_args([*command, "--precision", "fp64"])


def test_cli_fp16_on_cpu_is_one_line(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["segment", "--classes", "a", "--random-init", "--device", "cpu", "--precision", "fp16"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "precision='fp16' needs a CUDA device" in err[0], err


def test_cli_slow_bf16_warning_is_one_line(monkeypatch, capsys, tiny_clip_configs):
    from segmentation.commands._common import build_segmenter

    monkeypatch.setattr(_precision, "cpu_has_bf16", lambda: False)
    model = build_segmenter("lposs", f"open_clip:{tiny_clip_configs[0]}", "timm:vit_small_patch16_224.dino",
                            device="cpu", random_init=True, precision="bf16", prog="lposs segment")
    assert model.vlm.precision == model.vm.precision == "bf16"
    err = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert len(err) == 1 and err[0].startswith("lposs segment: warning: precision='bf16': this CPU"), err
