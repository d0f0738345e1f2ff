"""3x3 convolutions through NNPACK's Winograd kernels on the CPU, forward and backward.

oneDNN, which torch uses for CPU convolutions, computes a 3x3 convolution directly: 9 multiply-adds per
output pixel and channel pair.  NNPACK (built into torch's x86 and ARM wheels) computes it in the Winograd
domain, F(6x6, 3x3): 8x8 input tiles give 6x6 outputs for 64 multiplications per channel pair instead of
324, at the price of transforms that are cheap when channels are many.  On the 2-core CPUs measured here a
float32 3x3 convolution of 128-256 channels at 128-512 px ran 1.7-2.2x faster than oneDNN's; at 32-64
channels or below 128x128 pixels the transforms eat the gain (``benchmarks/bench_doorways.py``, README).

torch only uses NNPACK on its own for batches of 16 or more in NCHW, never for the backward pass, so this
module calls it directly: :class:`WinogradConv2d` is ``nn.Conv2d`` (same parameters and names, swapped in
place by :func:`use_winograd`) whose forward runs NNPACK, and whose input gradient is the same kind of
convolution with the kernel transposed and flipped, also through NNPACK.  The weight gradient, needed
only when training, goes to torch's own ``convolution_backward``.

What it changes is rounding: the Winograd transforms add float32 rounding of about 1e-4 of a layer's
output scale (direct convolution: about 1e-6).  The real-size decoder's image at 512x512 agrees with the
direct one to 1.4e-4 (pixels 0..1), and its gradient on the latent to a cosine of 1.0000.

Measured at real size (a Doorways step, 512x512, 64 cutouts, float32, 2-core Zen 4) it lowered the floor,
the decoder and CLIP forward and backward, from 12.25 to 10.93 s, but not the step (12.56 against 12.93 s;
a second run: floor 13.78 s, step 14.99 s).  With the worker keeping freed memory between steps
(:mod:`renderer.cpu_memory`) the gap between step and floor closed (11.25 against 10.83 s), but the floor
was then no lower than oneDNN's (10.51 s).  So the Doorways generator's ``winograd`` setting is off by default.

It runs only where it can: on the CPU, in float32 (not under autocast: NNPACK has no bfloat16), on
NCHW activations of at least :data:`MIN_PIXELS` (a channels-last tensor would be converted twice, which
costs more than the gain); with the setting ``"auto"``, only where :func:`cpu_speedup` measured it faster
than oneDNN on this machine.  Anything else goes to ``nn.Conv2d``'s own forward.  If NNPACK fails at run time it is logged once
and not used again in this process.
"""
from __future__ import annotations

import functools
import logging
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from renderer.layer_swap import swap_classes

log = logging.getLogger(__name__)

MIN_PIXELS = 128 * 128  # below this the Winograd transforms cost more than they save (measured, see above)
MIN_SPEEDUP = 1.15  # "auto" turns Winograd on where it measured at least this much faster than oneDNN
_failed: list[str] = []  # the first run-time failure, if any: then never again in this process


@functools.lru_cache(maxsize=None)
def available() -> bool:
    """NNPACK is in this torch build and initialises on this CPU (``is_available`` also initialises it)."""
    try:
        return bool(torch.backends.nnpack.is_available())
    except (RuntimeError, AttributeError) as exc:
        log.info("NNPACK is not usable here: %s", exc)
        return False


def _nnpack(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return torch._nnpack_spatial_convolution(x.contiguous(), weight.contiguous(), bias, [1, 1], [1, 1])


class _WinogradConv3x3(torch.autograd.Function):
    """``F.conv2d(x, weight, bias, padding=1)`` for a 3x3 kernel, forward and input gradient through NNPACK."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        ctx.save_for_backward(x if weight.requires_grad else None, weight)
        return _nnpack(x, weight, bias)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, weight = ctx.saved_tensors
        grad = grad.contiguous()
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:
            # the input gradient of a stride-1, padding-1 3x3 correlation is the correlation of the output
            # gradient with the kernel's in/out channels swapped and its taps flipped
            gx = _nnpack(grad, weight.transpose(0, 1).flip(2, 3), None)
        if ctx.needs_input_grad[1]:
            gw = torch.ops.aten.convolution_backward(grad, x, weight, None, [1, 1], [1, 1], [1, 1], False, [0, 0], 1,
                                                     [False, True, False])[1]
        if ctx.needs_input_grad[2]:
            gb = grad.sum((0, 2, 3))
        return gx, gw, gb


def conv3x3(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.conv2d(x, weight, bias, padding=1)`` through NNPACK's Winograd kernels (3x3, stride 1, float32, CPU)."""
    return _WinogradConv3x3.apply(x, weight, bias)


def _usable(conv: nn.Conv2d, x: torch.Tensor) -> bool:
    return (not _failed and x.device.type == "cpu" and x.dtype == torch.float32 and x.dim() == 4
            and conv.weight.dtype == torch.float32 and x.shape[-1] * x.shape[-2] >= MIN_PIXELS
            and x.is_contiguous() and not torch.is_autocast_enabled("cpu")
            and not torch.compiler.is_compiling() and available())


class WinogradConv2d(nn.Conv2d):
    """A 3x3, stride-1, padding-1 ``nn.Conv2d`` that runs through NNPACK's Winograd kernels where that pays
    (see the module's doc); elsewhere exactly ``nn.Conv2d``.  Made by :func:`use_winograd`, not directly."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _usable(self, x):
            try:
                return conv3x3(x, self.weight, self.bias)
            except RuntimeError as exc:  # NNPACK refuses (e.g. out of memory): oneDNN from now on
                _failed.append(str(exc))
                log.warning("NNPACK's Winograd convolution failed (%s); using torch's own convolutions from now on",
                            exc)
        return super().forward(x)


def _eligible(m: nn.Module) -> bool:
    return (m.kernel_size == (3, 3) and m.stride == (1, 1) and m.padding == (1, 1) and m.dilation == (1, 1)
            and m.groups == 1 and m.padding_mode == "zeros")


def use_winograd(module: nn.Module) -> int:
    """Make every plain 3x3, stride-1, padding-1 ``nn.Conv2d`` under ``module`` a :class:`WinogradConv2d`
    (the same parameters; names and checkpoints unchanged).  Returns how many were swapped."""
    return swap_classes(module, {nn.Conv2d: WinogradConv2d}, when=_eligible)


def use_direct(module: nn.Module) -> int:
    """Undo :func:`use_winograd`: plain ``nn.Conv2d`` again."""
    return swap_classes(module, {WinogradConv2d: nn.Conv2d})


@functools.lru_cache(maxsize=None)
def cpu_speedup(threads: int | None = None) -> float:
    """How much faster NNPACK's Winograd runs a float32 3x3 convolution (128 channels, 256x256, forward: the
    size that dominates a Doorways decoder) than oneDNN does on channels-last activations, the layout it
    otherwise runs in (> 1: faster; 0: no NNPACK).

    Measured once per process, only when a setting asks for "auto" (about 0.8 s): the fastest of 3
    interleaved rounds each.  (At 128x128 the same measurement read 1.13-1.16x on a Zen 4 where the
    decoder's own sizes run 1.7-2.2x faster: too close to the threshold to decide by.)  ``threads`` only
    keys the cache (the measurement uses torch's current thread count).
    """
    if not available():
        return 0.0
    import time

    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 128, 256, 256, generator=g)
    xl = x.contiguous(memory_format=torch.channels_last)
    w = torch.randn(128, 128, 3, 3, generator=g) * 0.03

    def direct() -> None:
        F.conv2d(xl, w, padding=1)

    def wino() -> None:
        _nnpack(x, w, None)

    times: dict[str, list[float]] = {"direct": [], "winograd": []}
    fns = {"direct": direct, "winograd": wino}
    with torch.no_grad():
        try:
            for fn in fns.values():
                fn()  # first calls: kernels picked, workspace allocated
            for _ in range(3):
                for name, fn in fns.items():
                    start = time.perf_counter()
                    fn()
                    times[name].append(time.perf_counter() - start)
        except RuntimeError as exc:
            log.info("NNPACK's Winograd convolution does not run here: %s", exc)
            return 0.0
    speedup = min(times["direct"]) / min(times["winograd"])
    log.info("winograd auto: NNPACK's Winograd 3x3 convolution measured %.2fx oneDNN's here; %s", speedup,
             "using it for float32 decoders" if speedup >= MIN_SPEEDUP else "not used")
    return speedup


def wanted(setting: Any, device: torch.device) -> bool:
    """The ``winograd`` setting (``"auto"`` | bool) resolved for ``device``: True only on the CPU with NNPACK,
    and for ``"auto"`` only where :func:`cpu_speedup` measured at least :data:`MIN_SPEEDUP`."""
    if torch.device(device).type != "cpu" or setting is False or not available():
        return False
    if setting is True:
        return True
    return cpu_speedup(torch.get_num_threads()) >= MIN_SPEEDUP
