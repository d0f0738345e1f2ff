"""``pixels`` and ``fourier``: the picture itself is the parameter, as in Lucid's ``image()`` parametrisation.

- ``pixels``: a logit per pixel and channel.
- ``fourier``: the picture's real 2-D spectrum, each frequency scaled by
  ``sqrt(W H) / max(f, 1/max(W, H)) ** decay_power`` so that Adam moves low frequencies
  as readily as high ones (Lucid's ``fft_image``; the ``/ 4`` keeps its scale).

Both map to colour through Lucid's decorrelated colour space (the square root of
ImageNet's colour correlation, normalised by its largest column norm) and a
sigmoid, so the optimiser works in roughly independent luminance / chroma axes.

Settings beyond the shared ones: ``decorrelate`` (bool, true), ``init_std`` (float,
0.01: the spread of the random start), and for ``fourier`` ``decay_power`` (1.0).
An init image is inverted exactly into the parameters (up to the sigmoid's clamp).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch

from renderer.base import RenderContext, register
from renderer.guidance.host import Canvas, GuidanceSettings, GuidedGenerator
from renderer.guidance.motion import warp_image

# Lucid's colour_correlation_svd_sqrt (ImageNet), normalised by the largest column norm.
_COLOR_SQRT = torch.tensor([[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]])
COLOR_MATRIX = _COLOR_SQRT / _COLOR_SQRT.norm(dim=0).max()


def decorrelated_to_rgb(x: torch.Tensor, decorrelate: bool = True) -> torch.Tensor:
    """(1, 3, H, W) in the decorrelated space (or plain logits) -> RGB in (0, 1)."""
    if decorrelate:
        x = torch.einsum("ij,bjhw->bihw", COLOR_MATRIX.to(x.device, x.dtype), x)
    return torch.sigmoid(x)


def rgb_to_decorrelated(rgb: torch.Tensor, decorrelate: bool = True, eps: float = 1e-3) -> torch.Tensor:
    """The inverse of :func:`decorrelated_to_rgb` (pixels clamped to [eps, 1 - eps])."""
    x = torch.logit(rgb.float().clamp(eps, 1 - eps))
    if decorrelate:
        x = torch.einsum("ij,bjhw->bihw", torch.linalg.inv(COLOR_MATRIX).to(x.device), x)
    return x


def spectrum_scale(height: int, width: int, decay_power: float = 1.0) -> torch.Tensor:
    """(H, W//2+1) per-frequency scale ``sqrt(W*H) / max(f, 1/max(W,H))**decay_power`` (Lucid's ``fft_image``).

    The ``sqrt(W*H)`` makes the inverse transform unitary, so learning rates are like pixels'.
    """
    fy = torch.fft.fftfreq(height)[:, None]
    fx = torch.fft.rfftfreq(width)[None, :]
    f = torch.sqrt(fx * fx + fy * fy)
    return math.sqrt(width * height) / torch.clamp(f, min=1.0 / max(width, height)) ** decay_power


def fourier_to_image(spec: torch.Tensor, scale: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(1, 3, H, W//2+1, 2) real/imaginary parameters -> (1, 3, H, W) decorrelated image (before colour)."""
    s = scale.to(spec.device)
    c = torch.complex(spec[..., 0].float() * s, spec[..., 1].float() * s)
    return torch.fft.irfft2(c, s=(height, width)) / 4.0


def image_to_fourier(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """The inverse of :func:`fourier_to_image` for a (1, 3, H, W) decorrelated image."""
    c = torch.fft.rfft2(x.float() * 4.0) / scale.to(x.device)
    return torch.stack([c.real, c.imag], dim=-1)


@dataclass(frozen=True)
class PixelSettings(GuidanceSettings):
    lr: float = 0.05
    decorrelate: bool = True
    init_std: float = field(default=0.01, metadata={"min": 0.0, "max": 10.0})


@dataclass(frozen=True)
class FourierSettings(PixelSettings):
    decay_power: float = field(default=1.0, metadata={"min": 0.0, "max": 4.0})


class PixelsGenerator(GuidedGenerator):
    name = "pixels"
    title = "Pixels"
    settings_cls = PixelSettings
    tiny_label = "pixels steered by a tiny random-initialised CLIP (no trained weights; the picture is noise)"

    def make_canvas(self, s: PixelSettings, width: int, height: int, gen: torch.Generator, device: torch.device,
                    init: torch.Tensor | None, init_path: Path | None) -> Canvas:
        if init is None:
            p = torch.randn(1, 3, height, width, generator=gen) * s.init_std
        else:
            p = rgb_to_decorrelated(init.cpu(), s.decorrelate)
        p = p.to(device).requires_grad_(True)

        def warp(q: torch.Tensor, matrix: torch.Tensor) -> None:
            moved = warp_image(decorrelated_to_rgb(q, s.decorrelate), matrix)
            q.copy_(rgb_to_decorrelated(moved, s.decorrelate))

        return Canvas(params=p, image=lambda q: decorrelated_to_rgb(q, s.decorrelate), warp=warp)


class FourierGenerator(GuidedGenerator):
    name = "fourier"
    title = "Fourier pixels"
    settings_cls = FourierSettings
    tiny_label = "Fourier pixels steered by a tiny random-initialised CLIP (no trained weights; the picture is noise)"

    def make_canvas(self, s: FourierSettings, width: int, height: int, gen: torch.Generator, device: torch.device,
                    init: torch.Tensor | None, init_path: Path | None) -> Canvas:
        scale = spectrum_scale(height, width, s.decay_power)
        if init is None:
            spec = torch.randn(1, 3, height, width // 2 + 1, 2, generator=gen) * s.init_std
        else:
            spec = image_to_fourier(rgb_to_decorrelated(init.cpu(), s.decorrelate), scale)
        spec = spec.to(device).requires_grad_(True)
        scale = scale.to(device)

        def image(q: torch.Tensor) -> torch.Tensor:
            return decorrelated_to_rgb(fourier_to_image(q, scale, height, width), s.decorrelate)

        def warp(q: torch.Tensor, matrix: torch.Tensor) -> None:
            moved = warp_image(image(q), matrix)
            q.copy_(image_to_fourier(rgb_to_decorrelated(moved, s.decorrelate), scale))

        return Canvas(params=spec, image=image, warp=warp)


@register("pixels")
def pixels_factory(settings: Mapping[str, Any], ctx: RenderContext) -> PixelsGenerator:
    return PixelsGenerator(PixelsGenerator.parse(settings), ctx)


@register("fourier")
def fourier_factory(settings: Mapping[str, Any], ctx: RenderContext) -> FourierGenerator:
    return FourierGenerator(FourierGenerator.parse(settings), ctx)


__all__ = ["PixelsGenerator", "FourierGenerator"]
