"""``siren`` (Deep Daze): a sine-activated coordinate network whose weights are the parameters.

The network maps each pixel's (x, y) in [-1, 1] to RGB: ``layers`` hidden layers of
``hidden`` units with ``sin(w0 * (W x + b))`` activations, initialised as in
Sitzmann et al. (first layer U(-1/in, 1/in) with ``w0_initial``, later layers
U(-sqrt(6/in)/w0, sqrt(6/in)/w0)), a linear output, and ``(out + 1) / 2`` clamped
to [0, 1] as Deep Daze does.  Deep Daze's defaults: 16 layers of 256, w0 = 30, lr 1e-5.

An init image is fitted first (``init_fit_steps`` Adam steps at ``init_fit_lr`` of mean squared
error, deterministic), then CLIP takes over.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from renderer.base import RenderContext, register
from renderer.guidance.host import Canvas, GuidanceSettings, GuidedGenerator


@dataclass(frozen=True)
class SirenSettings(GuidanceSettings):
    lr: float = 1e-5
    hidden: int = field(default=256, metadata={"min": 4, "max": 4096})
    layers: int = field(default=16, metadata={"min": 1, "max": 64})
    w0: float = field(default=30.0, metadata={"min": 0.01, "max": 1000.0})
    w0_initial: float = field(default=30.0, metadata={"min": 0.01, "max": 1000.0})
    init_fit_steps: int = field(default=200, metadata={"max": 100000})
    init_fit_lr: float = 1e-3


def init_siren(hidden: int, layers: int, w0: float, gen: torch.Generator, dim_in: int = 2,
               dim_out: int = 3) -> list[torch.Tensor]:
    """[W0, b0, W1, b1, ..., W_out, b_out] with SIREN's initialisation, drawn from ``gen``."""
    params: list[torch.Tensor] = []
    dims = [dim_in] + [hidden] * layers + [dim_out]
    for i in range(len(dims) - 1):
        fan_in, fan_out = dims[i], dims[i + 1]
        bound = 1.0 / fan_in if i == 0 else math.sqrt(6.0 / fan_in) / w0
        params.append((torch.rand(fan_out, fan_in, generator=gen) * 2 - 1) * bound)
        params.append((torch.rand(fan_out, generator=gen) * 2 - 1) * bound)
    return params


def coordinates(height: int, width: int, device: torch.device) -> torch.Tensor:
    """(H*W, 2) pixel centres in [-1, 1], x then y."""
    ys = torch.linspace(-1, 1, height, device=device)
    xs = torch.linspace(-1, 1, width, device=device)
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([gx, gy], dim=-1).reshape(-1, 2)


def siren_forward(params: Sequence[torch.Tensor], coords: torch.Tensor, w0: float, w0_initial: float) -> torch.Tensor:
    x = coords
    n = len(params) // 2
    for i in range(n - 1):
        x = torch.sin((w0_initial if i == 0 else w0) * torch.nn.functional.linear(x, params[2 * i], params[2 * i + 1]))
    return torch.nn.functional.linear(x, params[-2], params[-1])


def siren_image(params: Sequence[torch.Tensor], coords: torch.Tensor, height: int, width: int, w0: float,
                w0_initial: float) -> torch.Tensor:
    out = siren_forward(params, coords, w0, w0_initial)
    return ((out + 1) / 2).clamp(0, 1).t().reshape(1, 3, height, width)


class SirenGenerator(GuidedGenerator):
    name = "siren"
    title = "SIREN (Deep Daze)"
    settings_cls = SirenSettings
    tiny_label = "SIREN steered by a tiny random-initialised CLIP (no trained weights; the picture is noise)"

    def make_canvas(self, s: SirenSettings, width: int, height: int, gen: torch.Generator, device: torch.device,
                    init: torch.Tensor | None, init_path: Path | None) -> Canvas:
        params = [p.to(device).requires_grad_(True) for p in init_siren(s.hidden, s.layers, s.w0, gen)]
        coords = coordinates(height, width, device)

        def image(ps: Sequence[torch.Tensor]) -> torch.Tensor:
            return siren_image(ps, coords, height, width, s.w0, s.w0_initial)

        if init is not None and s.init_fit_steps:
            fit_to_image(params, image, init, s.init_fit_steps, s.init_fit_lr)
        return Canvas(params=params, image=image)


def fit_to_image(params: list[torch.Tensor], image: Any, target: torch.Tensor, steps: int, lr: float = 1e-4) -> float:
    """Fit the network to a picture (mean squared error); returns the final error."""
    opt = torch.optim.Adam(params, lr=lr)
    loss = torch.zeros(())
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        loss = (image(params) - target).pow(2).mean()
        loss.backward()
        opt.step()
    return float(loss.detach())


@register("siren")
def factory(settings: Mapping[str, Any], ctx: RenderContext) -> SirenGenerator:
    return SirenGenerator(SirenGenerator.parse(settings), ctx)
