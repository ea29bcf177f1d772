"""The encoders' ``precision`` option: float32 (exact), bfloat16 (CPU and CUDA), float16 (CUDA)."""

from __future__ import annotations

import functools
import platform
import subprocess
import warnings
from pathlib import Path

import torch

from graphprop._validation import check_choice

__all__ = ["PRECISIONS", "check_precision", "cpu_has_bf16", "probe_cpu_bf16", "resolve_precision"]

PRECISIONS = ("fp32", "bf16", "fp16")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}

# CPU flags of units that multiply bfloat16 natively (x86: AVX512-BF16, AMX-BF16; Arm: FEAT_BF16).
_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})


def check_precision(precision: object, device: torch.device | str | None = None) -> str:
    """Check a ``precision`` option.

    Parameters
    ----------
    precision : object
        One of :data:`PRECISIONS`: ``"fp32"``, ``"bf16"``, ``"fp16"``.
    device : str or torch.device, optional
        Given, the precision must run there (fp16 needs CUDA).

    Returns
    -------
    str
        ``precision``.

    Raises
    ------
    TypeError
        A precision that is not a string.
    ValueError
        One line, for an unknown precision or fp16 off CUDA.
    """
    precision = check_choice("precision", precision, PRECISIONS)
    if precision == "fp16" and device is not None and torch.device(device).type != "cuda":
        raise ValueError(f"precision='fp16' needs a CUDA device (got device={str(device)!r}); "
                         "on CPU use precision='bf16' or 'fp32'")
    return precision


def resolve_precision(precision: str, half: bool, device: torch.device) -> tuple[str, torch.dtype]:
    """The precision an encoder runs in and its dtype, after the checks.

    Parameters
    ----------
    precision : {"fp32", "bf16", "fp16"}
    half : bool
        The deprecated alias of ``precision="fp16"`` (a ``DeprecationWarning``).
    device : torch.device
        The encoder's device.

    Returns
    -------
    precision : str
    dtype : torch.dtype

    Raises
    ------
    TypeError
        For a precision that is not a string.
    ValueError
        For an unknown precision, ``half=True`` with another precision than fp16, or fp16 off
        CUDA.

    Warns
    -----
    DeprecationWarning
        For ``half=True``.
    UserWarning
        For bf16 where the hardware has no bf16 units (it is emulated, slower than fp32).
    """
    check_precision(precision)
    if half:
        warnings.warn("half=True is deprecated; use precision='fp16'", DeprecationWarning, stacklevel=3)
        if precision not in ("fp32", "fp16"):
            raise ValueError(f"half=True means precision='fp16' and contradicts precision={precision!r}; "
                             "pass only precision")
        precision = "fp16"
    check_precision(precision, device)
    if precision == "bf16":
        _warn_if_slow_bf16(device)
    return precision, DTYPES[precision]


def _warn_if_slow_bf16(device: torch.device) -> None:
    if device.type == "cpu":
        if cpu_has_bf16() is not False:
            return
        where = f"this CPU ({platform.processor() or platform.machine()})"
    elif device.type == "cuda":
        if torch.cuda.is_bf16_supported(including_emulation=False):
            return
        where = f"this GPU ({torch.cuda.get_device_name(device)})"
    else:
        return
    warnings.warn(f"precision='bf16': {where} has no bfloat16 units, so bf16 is emulated and likely "
                  "slower than fp32; use precision='fp32'", UserWarning, stacklevel=4)


@functools.lru_cache(maxsize=1)
def cpu_has_bf16() -> bool | None:
    """Whether this CPU multiplies bfloat16 natively (AVX512-BF16, AMX-BF16, Arm BF16).

    Read from ``/proc/cpuinfo`` (Linux) or ``sysctl`` (macOS), once per process.

    Returns
    -------
    bool or None
        ``None`` when it cannot be told.
    """
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        return probe_cpu_bf16(cpuinfo)
    if platform.system() == "Darwin":
        try:
            out = subprocess.run(["sysctl", "-n", "hw.optional.arm.FEAT_BF16"], capture_output=True, text=True,
                                 timeout=5, check=False).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return None
        return out == "1" if out in ("0", "1") else None
    return None


def probe_cpu_bf16(cpuinfo: Path) -> bool | None:
    """Whether a ``/proc/cpuinfo`` file lists a bf16 unit among its ``flags`` (x86) or ``Features`` (Arm).

    Parameters
    ----------
    cpuinfo : Path
        A file in ``/proc/cpuinfo``'s format.

    Returns
    -------
    bool or None
        ``None`` when it lists no flags at all.
    """
    flags: set[str] = set()
    for line in cpuinfo.read_text(errors="replace").splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("flags", "features"):
            flags.update(value.split())
    return bool(flags & _BF16_FLAGS) if flags else None
