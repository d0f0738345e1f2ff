"""What every synthesis network here shares: the W+ interface and a JSON-able config."""
from __future__ import annotations

import contextlib
import threading
from typing import Any, Iterator

import torch

NOISE_MODES = ("const", "random", "none")


def cpu_render_dtype(device: torch.device, dtype: torch.dtype | None, amp: bool = True) -> torch.dtype | None:
    """bfloat16 when the worker renders in it (``precision``: see :func:`renderer.device.render_dtype`) on the
    CPU and ``amp`` is on; None: the network's own precision (float32 on the CPU; on CUDA the float16 layers
    the checkpoint was trained with, as NVlabs runs them).

    bfloat16 keeps float32's range, so it cannot overflow where float32 would not: only rounding differs
    (at official size 42-50 dB PSNR against float32, a mean of 0.1-1.2 of an 8-bit level).
    """
    if amp and torch.device(device).type == "cpu" and dtype == torch.bfloat16:
        return torch.bfloat16
    return None


def synthesis_precision(dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """The autocast context for :func:`cpu_render_dtype`'s answer (a no-op for None)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast("cpu", dtype=dtype)


class Synthesis(torch.nn.Module):
    """Base class: ``forward(ws[N, num_ws, w_dim], noise_mode) -> images[N, C, H, W]`` in about [-1, 1].

    Subclasses set ``family``, ``num_ws``, ``w_dim``, ``img_resolution``, ``img_channels``,
    own a ``w_avg`` buffer (the mapping network's running mean of W) and return the
    keyword arguments that rebuild them from :meth:`config`.
    """

    family: str = ""
    # On the CPU, run a batch one sample at a time (better cache use than a grouped convolution).
    cpu_batch_per_sample: bool = True
    num_ws: int
    w_dim: int
    img_resolution: int
    img_channels: int

    def __init__(self) -> None:
        super().__init__()
        self.fp16_enabled = False  # set by the caller on CUDA when the checkpoint trained with fp16

    @property
    def has_fp16(self) -> bool:
        return False

    def config(self) -> dict[str, Any]:
        raise NotImplementedError

    def forward(self, ws: torch.Tensor, noise_mode: str = "const",
                generator: torch.Generator | None = None) -> torch.Tensor:
        """Images for ``ws``; on the CPU a batch may run one sample at a time (``cpu_batch_per_sample``)."""
        self.check_noise_mode(noise_mode)
        self.check_ws(ws)
        if self.cpu_batch_per_sample and ws.device.type == "cpu" and ws.shape[0] > 1:
            return torch.cat([self.synthesize(ws[i:i + 1], noise_mode, generator) for i in range(ws.shape[0])])
        return self.synthesize(ws, noise_mode, generator)

    def synthesize(self, ws: torch.Tensor, noise_mode: str, generator: torch.Generator | None) -> torch.Tensor:
        raise NotImplementedError

    @staticmethod
    def check_noise_mode(noise_mode: str) -> None:
        if noise_mode not in NOISE_MODES:
            raise ValueError(f"noise_mode must be one of {', '.join(NOISE_MODES)}, got {noise_mode!r}")

    def check_ws(self, ws: torch.Tensor) -> None:
        if ws.ndim != 3 or ws.shape[1] != self.num_ws or ws.shape[2] != self.w_dim:
            raise ValueError(
                f"ws must have shape [N, {self.num_ws}, {self.w_dim}] for this {self.family} network, "
                f"got {list(ws.shape)}"
            )


def randn_like_on(shape: list[int], like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Gaussian noise with ``generator`` (drawn where the generator lives), moved next to ``like``."""
    if generator is None:
        return torch.randn(shape, device=like.device, dtype=like.dtype)
    return torch.randn(shape, generator=generator, device=generator.device).to(like.device, like.dtype)


_INIT = threading.local()


@contextlib.contextmanager
def weights_from_checkpoint() -> Iterator[None]:
    """Networks built inside skip their random initialisation: a checkpoint is about to overwrite every weight.

    (Drawing tens of millions of Gaussian numbers took longer than reading the checkpoint itself.)
    Only for loaders that then check every parameter and buffer was given (``load_state_strict``).
    """
    before = getattr(_INIT, "skip", False)
    _INIT.skip = True
    try:
        yield
    finally:
        _INIT.skip = before


def init_randn(*size: int, scale: float = 1.0) -> torch.Tensor:
    """``torch.randn(*size) * scale`` for a fresh network; uninitialised memory inside
    :func:`weights_from_checkpoint` (not even scaled: touching the pages is most of the cost)."""
    if getattr(_INIT, "skip", False):
        return torch.empty(*size)
    return torch.randn(*size) * scale if scale != 1.0 else torch.randn(*size)


def init_rand(*size: int) -> torch.Tensor:
    """``torch.rand(*size)``, or uninitialised memory inside :func:`weights_from_checkpoint`."""
    return torch.empty(*size) if getattr(_INIT, "skip", False) else torch.rand(*size)
