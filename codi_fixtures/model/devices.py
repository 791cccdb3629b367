"""Resolve ``--device`` / ``--dtype`` options into torch objects, with clear errors."""

from __future__ import annotations

import torch

from codi_fixtures.errors import ConfigError

__all__ = ["DTYPES", "is_out_of_memory", "resolve_device", "resolve_dtype"]

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


# What a failed host-memory allocation says: torch's CPU allocator, and the MPS backend.
_HOST_OOM_MESSAGES = ("can't allocate memory", "MPS backend out of memory")


def is_out_of_memory(err: BaseException) -> bool:
    """Whether ``err`` is a failed device or host allocation (worth retrying smaller).

    CUDA raises :class:`torch.OutOfMemoryError`; a CPU allocation that the OS refuses
    (a memory limit, an exhausted machine) raises a plain ``RuntimeError`` from the
    ``DefaultCPUAllocator``, recognised by its message.
    """
    if isinstance(err, torch.OutOfMemoryError):
        return True
    return isinstance(err, RuntimeError) and any(m in str(err) for m in _HOST_OOM_MESSAGES)


def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda when available, else cpu; ``cuda`` without CUDA is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise ConfigError(
            f"--device {name!r} is not a device; use auto, cpu, cuda or cuda:N"
        ) from err
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(
                f"--device {name} asked for CUDA, but this torch build/machine has no CUDA "
                f"(torch {torch.__version__}); use --device cpu, or install a CUDA build of torch"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(
                f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) visible"
            )
    elif device.type not in {"cpu", "mps"}:
        raise ConfigError(f"--device {name}: unsupported device type; use auto, cpu or cuda[:N]")
    return device


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """``auto`` -> float32 on CPU, bfloat16 on CUDA; refuse a dtype the device cannot run."""
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if name not in DTYPES:
        raise ConfigError(f"--dtype {name!r} is unknown; use auto or one of {sorted(DTYPES)}")
    dtype = DTYPES[name]
    if device.type == "cuda" and dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
        raise ConfigError(f"--dtype {name}: this GPU has no bfloat16 support; use float16")
    if device.type == "cpu" and dtype == torch.float16:
        raise ConfigError(
            "--dtype float16 is not supported on CPU (slow, and several kernels are missing); "
            "use float32 or bfloat16 on CPU"
        )
    return dtype
