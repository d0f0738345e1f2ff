"""Device and dtype choice, made once per process and passed down to every render.

The worker calls :func:`choose_device` and :func:`autocast_dtype` at start-up,
puts the results into :class:`renderer.base.RenderContext`, and generators use
:func:`autocast` with those values instead of picking a device themselves.
"""
from __future__ import annotations

import contextlib
import functools
import logging
import random
import re
from typing import ContextManager

import torch

from exhibits.show import PRECISIONS

log = logging.getLogger(__name__)

DEVICE_CHOICES = ("auto", "cpu", "cuda", "cuda:N")
_CUDA_RE = re.compile(r"^cuda(?::(\d+))?$")


class DeviceUnavailable(RuntimeError):
    """The requested device cannot be used on this machine; the message says what to set instead."""


def choose_device(pref: str = "auto") -> torch.device:
    """Return the device to render on.

    ``"auto"`` picks CUDA when it is available and the CPU otherwise.  ``"cpu"``,
    ``"cuda"`` and ``"cuda:N"`` are taken literally; asking for CUDA on a machine
    without it raises :class:`DeviceUnavailable` rather than silently using the CPU.
    """
    if not isinstance(pref, str):
        raise ValueError(f"device must be a string, one of {', '.join(DEVICE_CHOICES)}; got {pref!r}")
    choice = pref.strip().lower()
    if choice == "auto":
        dev = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
        log.info("device auto -> %s", dev)
        return dev
    if choice == "cpu":
        return torch.device("cpu")
    match = _CUDA_RE.match(choice)
    if match is None:
        raise ValueError(f"unknown device {pref!r}; allowed values: {', '.join(DEVICE_CHOICES)}")
    if not torch.cuda.is_available():
        raise DeviceUnavailable(
            f"device {pref!r} requested but CUDA is not available on this machine "
            "(torch.cuda.is_available() is False); set device = \"auto\" or \"cpu\""
        )
    index = int(match.group(1)) if match.group(1) is not None else 0
    count = torch.cuda.device_count()
    if index >= count:
        raise DeviceUnavailable(f"device {pref!r} requested but only {count} CUDA device(s) exist (cuda:0..cuda:{count - 1})")
    return torch.device("cuda", index)


def autocast_dtype(device: torch.device) -> torch.dtype:
    """The reduced-precision dtype for autocast on ``device``.

    bfloat16 on the CPU; on CUDA bfloat16 where the GPU supports it, float16 otherwise.
    """
    device = torch.device(device)
    if device.type == "cuda":
        with torch.cuda.device(device):
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16


_PRECISION_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@functools.lru_cache(maxsize=None)
def cpu_bfloat16_speedup(threads: int | None = None) -> float:
    """How much faster bfloat16 autocast runs than float32 on this CPU for what renders are made of: a 3x3
    convolution on channels-last activations (128 channels, 64x64) and a CLIP-sized dense layer (768 -> 3072
    on 256 tokens), each forward and backward (> 1: faster).

    Measured once per process (about 0.7 s): the fastest of 7 interleaved rounds each, since interference
    from elsewhere on the machine only ever adds time.  The work is large enough that allocation does not
    blur it: a smaller version of this measurement, under the worker's transparent huge pages, read
    anywhere from 1.14x to 1.7x in five runs on a CPU where bfloat16 runs StyleGAN2 2.3-2.9x faster, and
    so flipped the worker's choice between runs.  It is a property of the machine, not of the model: on
    2-core AMD Zen 4 and Zen 5 VMs bfloat16 ran 1.5-2.3x faster; on a 2-core Intel Xeon VM (AVX-512 with
    bfloat16, no AMX) the same convolutions ran 1.4x slower and dense layers 2x slower.  ``threads`` only
    keys the cache (the measurement uses torch's current thread count).
    """
    import time

    import torch.nn.functional as F

    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 128, 64, 64, generator=g).contiguous(memory_format=torch.channels_last).requires_grad_(True)
    w = torch.randn(128, 128, 3, 3, generator=g, requires_grad=True)
    a = torch.randn(256, 768, generator=g, requires_grad=True)
    m = torch.randn(3072, 768, generator=g, requires_grad=True)

    def work(dtype: torch.dtype) -> float:
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
            y = F.conv2d(x, w, padding=1)
            z = F.linear(a, m)
        (y.float().sum() + z.float().sum()).backward()
        return time.perf_counter() - start

    times: dict[torch.dtype, list[float]] = {torch.float32: [], torch.bfloat16: []}
    for dtype in times:
        work(dtype)  # first calls: oneDNN picks and builds its kernels
    for _ in range(7):
        for dtype in times:
            times[dtype].append(work(dtype))
    fp32, bf16 = (min(t) for t in times.values())
    return fp32 / bf16


def render_dtype(device: torch.device, precision: str = "auto") -> torch.dtype:
    """The dtype renders run in on ``device`` (float32 means no autocast).

    ``precision`` ``"auto"``: on CUDA :func:`autocast_dtype`; on the CPU bfloat16 when
    :func:`cpu_bfloat16_speedup` finds it at least 1.15x faster on this machine, else float32.
    ``"float32"``, ``"bfloat16"`` or ``"float16"`` are taken as they are.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")
    device = torch.device(device)
    if precision != "auto":
        return _PRECISION_DTYPES[precision]
    if device.type == "cuda":
        return autocast_dtype(device)
    if device.type != "cpu":
        return torch.float32
    speedup = cpu_bfloat16_speedup(torch.get_num_threads())
    dtype = torch.bfloat16 if speedup >= 1.15 else torch.float32
    log.info("precision auto on the CPU: bfloat16 autocast measured %.2fx float32 here; rendering in %s",
             speedup, str(dtype).removeprefix("torch."))
    return dtype


def autocast(device: torch.device, dtype: torch.dtype | None = None, enabled: bool = True) -> ContextManager:
    """An autocast context for ``device`` (``dtype`` defaults to :func:`autocast_dtype`).

    Device types without autocast support get a no-op context, so callers need no branches.
    """
    device = torch.device(device)
    if not enabled:
        return contextlib.nullcontext()
    if device.type not in ("cpu", "cuda"):
        log.debug("no autocast for device type %s; running in full precision", device.type)
        return contextlib.nullcontext()
    if dtype is None:
        dtype = autocast_dtype(device)
    if dtype == torch.float32:
        return contextlib.nullcontext()
    if dtype not in (torch.bfloat16, torch.float16):
        raise ValueError(f"autocast dtype must be torch.bfloat16, torch.float16 or torch.float32; got {dtype}")
    return torch.autocast(device_type=device.type, dtype=dtype)


def describe(device: torch.device) -> str:
    """A one-line description for logs and the staff page, e.g. ``'cpu (2 threads)'``."""
    device = torch.device(device)
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        props = torch.cuda.get_device_properties(index)
        gib = props.total_memory / 2**30
        return f"cuda:{index} {props.name} ({gib:.1f} GiB, compute capability {props.major}.{props.minor})"
    if device.type == "cpu":
        return f"cpu ({torch.get_num_threads()} threads)"
    return str(device)


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python's, NumPy's and torch's global generators and return a fresh CPU generator.

    Renders should draw from the returned generator (on the CPU, so the numbers do
    not depend on the device) rather than from global state.
    """
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an integer; got {seed!r}")
    if seed < 0 or seed >= 2**63:
        raise ValueError(f"seed must be in 0 .. 2**63-1; got {seed}")
    random.seed(seed)
    try:
        import numpy as np
    except ModuleNotFoundError:  # numpy is optional here
        pass
    else:
        np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    gen = torch.Generator(device="cpu")
    gen.manual_seed(seed)
    return gen
