"""``clipdraw``: a drawing of cubic Bézier strokes (control points, width, RGBA colour) steered by CLIP.

Rasterised in pure PyTorch (no compiled extension): each stroke is flattened to
``samples`` points along its curve, every pixel centre's distance to the nearest
of the resulting segments is taken, and the stroke covers the pixel by
``clamp(width/2 - d + 0.5, 0, 1)`` -- for a straight edge exactly the pixel's
area inside the stroke (a box filter), round caps at the ends.  Strokes are
composited over the background in order ("over").  Gradients reach control
points, widths and colours through the distance and the coverage ramp.

Distances are computed only inside each stroke's bounding box (grown by half its width
and a pixel), in chunks of strokes, so the work follows the strokes' size, not the canvas's.

As in Frans et al.'s CLIPDraw: ``strokes`` paths start at random points with
control points a random walk of ``radius`` (fraction of the canvas) around them;
learning rates relative to ``lr`` are 1 for points (pixels), 0.1 for widths and
0.01 for colours.  The finished piece is also written as an SVG (``drawing``).

Settings beyond the shared ones: ``strokes`` (int, 256), ``max_width`` (px, 20),
``min_width`` (px, 1), ``init_width`` (px, 2), ``radius`` (0.1), ``samples``
(points per stroke, 24), ``background`` ([r, g, b] in 0..1, white), ``opaque``
(bool, false: learn alpha too).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F

from exhibits.files import atomic_path
from renderer.base import RenderContext, register
from renderer.guidance.host import Canvas, GuidanceSettings, GuidedGenerator
from renderer.guidance.motion import warp_points

CHUNK_ELEMENTS = 1 << 23  # distance entries per chunk (32 MiB in float32, plus autograd's copies)


def _background(v: Any) -> tuple[float, float, float]:
    if (isinstance(v, (list, tuple)) and len(v) == 3
            and all(isinstance(c, (int, float)) and not isinstance(c, bool) and 0 <= c <= 1 for c in v)):
        return (float(v[0]), float(v[1]), float(v[2]))
    raise ValueError("[r, g, b] with each in 0..1")


@dataclass(frozen=True)
class DrawSettings(GuidanceSettings):
    lr: float = 1.0
    strokes: int = field(default=256, metadata={"min": 1, "max": 4096})
    max_width: float = field(default=20.0, metadata={"min": 0.5, "max": 512.0})
    min_width: float = field(default=1.0, metadata={"min": 0.0, "max": 512.0})
    init_width: float = field(default=2.0, metadata={"min": 0.0, "max": 512.0})
    radius: float = field(default=0.1, metadata={"min": 0.0, "max": 1.0})
    samples: int = field(default=24, metadata={"min": 2, "max": 256})
    background: Any = field(default=(1.0, 1.0, 1.0), metadata={"check": _background})
    opaque: bool = False


def bezier_points(ctrl: torch.Tensor, samples: int) -> torch.Tensor:
    """(N, 4, 2) cubic Bézier control points -> (N, samples, 2) points at evenly spaced t."""
    t = torch.linspace(0, 1, samples, device=ctrl.device, dtype=ctrl.dtype)[None, :, None]
    p0, p1, p2, p3 = (ctrl[:, i:i + 1] for i in range(4))
    u = 1 - t
    return u ** 3 * p0 + 3 * u * u * t * p1 + 3 * u * t * t * p2 + t ** 3 * p3


def segment_distance(pix: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Distance from pixels to segments a->b (N, S, 2), the nearest segment per stroke: (N, P).

    ``pix`` is (P, 2), the same pixels for every stroke, or (N, P, 2), each stroke's own pixels.
    """
    if pix.ndim == 2:
        pix = pix[None].expand(a.shape[0], -1, -1)
    abx, aby = (b - a).unbind(-1)  # (N, S)
    apx = pix[:, None, :, 0] - a[:, :, None, 0]  # (N, S, P)
    apy = pix[:, None, :, 1] - a[:, :, None, 1]
    inv = 1.0 / (abx * abx + aby * aby).clamp(min=1e-12)
    t = ((apx * abx[..., None] + apy * aby[..., None]) * inv[..., None]).clamp(0, 1)
    dx = apx - t * abx[..., None]
    dy = apy - t * aby[..., None]
    return (dx * dx + dy * dy).min(dim=1).values.clamp(min=1e-12).sqrt()


def _local_coverage(ctrl: torch.Tensor, width: torch.Tensor, height_px: int, width_px: int,
                    samples: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Coverage of each stroke over its own bounding box only: (N, Bh, Bw) and the boxes' x0, y0 (ints).

    Pixels outside a stroke's box are uncovered by construction (farther than width/2 + 1 from it), so the
    distances are computed only where they can matter -- the work follows the strokes' size, not the canvas's.
    """
    pts = bezier_points(ctrl, samples)
    with torch.no_grad():
        r = width.detach()[:, None] / 2 + 1.0
        lo = (pts.detach().amin(1) - r).floor().long()
        hi = (pts.detach().amax(1) + r).ceil().long()
        x0 = lo[:, 0].clamp(0, width_px - 1)
        y0 = lo[:, 1].clamp(0, height_px - 1)
        bw = int((hi[:, 0].clamp(1, width_px) - x0).clamp(min=1).max())
        bh = int((hi[:, 1].clamp(1, height_px) - y0).clamp(min=1).max())
        gx = x0[:, None].to(ctrl.dtype) + torch.arange(bw, device=ctrl.device, dtype=ctrl.dtype) + 0.5  # (N, Bw)
        gy = y0[:, None].to(ctrl.dtype) + torch.arange(bh, device=ctrl.device, dtype=ctrl.dtype) + 0.5  # (N, Bh)
        pix = torch.stack([gx[:, None, :].expand(-1, bh, -1), gy[:, :, None].expand(-1, -1, bw)], -1)
    d = segment_distance(pix.reshape(ctrl.shape[0], -1, 2), pts[:, :-1], pts[:, 1:])
    cov = (width[:, None] / 2 - d + 0.5).clamp(0, 1).reshape(-1, bh, bw)
    return cov, x0, y0


def _place(local: torch.Tensor, x0: int, y0: int, height_px: int, width_px: int) -> torch.Tensor:
    """A (Bh, Bw) patch at (x0, y0) on an empty (H, W) canvas; negative padding crops what falls outside."""
    bh, bw = local.shape
    return F.pad(local, (x0, width_px - x0 - bw, y0, height_px - y0 - bh))


def stroke_coverage(ctrl: torch.Tensor, width: torch.Tensor, height_px: int, width_px: int,
                    samples: int = 24) -> torch.Tensor:
    """(N, 4, 2) control points (pixels), (N,) widths -> (N, H, W) coverage in [0, 1]."""
    cov, x0, y0 = _local_coverage(ctrl, width, height_px, width_px, samples)
    return torch.stack([_place(cov[i], int(x0[i]), int(y0[i]), height_px, width_px) for i in range(cov.shape[0])])


def rasterise(ctrl: torch.Tensor, width: torch.Tensor, rgba: torch.Tensor, background: Sequence[float],
              height_px: int, width_px: int, samples: int = 24,
              chunk_elements: int = CHUNK_ELEMENTS) -> torch.Tensor:
    """Composite strokes in order over ``background`` -> (1, 3, H, W) in [0, 1]."""
    img = torch.tensor(background, device=ctrl.device, dtype=ctrl.dtype).view(3, 1, 1).expand(3, height_px, width_px)
    per_stroke = max(1, (samples - 1) * height_px * width_px)
    chunk = max(1, chunk_elements // per_stroke)
    for start in range(0, ctrl.shape[0], chunk):
        sl = slice(start, start + chunk)
        cov, x0, y0 = _local_coverage(ctrl[sl], width[sl], height_px, width_px, samples)
        alpha = cov * rgba[sl, 3, None, None]
        colour = rgba[sl, :3]
        for i in range(cov.shape[0]):
            a = _place(alpha[i], int(x0[i]), int(y0[i]), height_px, width_px)[None]
            img = img * (1 - a) + colour[i, :, None, None] * a
    return img[None]


def to_svg(ctrl: torch.Tensor, width: torch.Tensor, rgba: torch.Tensor, background: Sequence[float],
           height_px: int, width_px: int) -> str:
    """The drawing as SVG 1.1: one round-capped cubic path per stroke, in the same order."""
    def c(v: float) -> int:
        return int(round(min(1.0, max(0.0, v)) * 255))

    bg = "rgb({},{},{})".format(*(c(v) for v in background))
    lines = ['<?xml version="1.0" encoding="UTF-8"?>',
             f'<svg xmlns="http://www.w3.org/2000/svg" version="1.1" width="{width_px}" height="{height_px}" '
             f'viewBox="0 0 {width_px} {height_px}">',
             f'<rect x="0" y="0" width="{width_px}" height="{height_px}" fill="{bg}"/>']
    for p, w, col in zip(ctrl.tolist(), width.tolist(), rgba.tolist()):
        d = "M {:.3f} {:.3f} C {:.3f} {:.3f} {:.3f} {:.3f} {:.3f} {:.3f}".format(*(v for pt in p for v in pt))
        lines.append(f'<path d="{d}" fill="none" stroke="rgb({c(col[0])},{c(col[1])},{c(col[2])})" '
                     f'stroke-opacity="{min(1.0, max(0.0, col[3])):.4f}" stroke-width="{max(0.0, w):.3f}" '
                     'stroke-linecap="round"/>')
    lines.append("</svg>")
    return "\n".join(lines) + "\n"


def initial_strokes(n: int, width_px: int, height_px: int, radius: float, init_width: float, opaque: bool,
                    gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """CLIPDraw's start: a random point per stroke, the other control points a random walk around it."""
    start = torch.rand(n, 1, 2, generator=gen)
    steps = (torch.rand(n, 3, 2, generator=gen) - 0.5) * 2 * radius
    pts = torch.cat([start, start + steps.cumsum(1)], dim=1)
    ctrl = pts * torch.tensor([width_px, height_px], dtype=torch.float32)
    widths = torch.full((n,), float(init_width))
    rgba = torch.rand(n, 4, generator=gen)
    if opaque:
        rgba[:, 3] = 1.0
    return ctrl, widths, rgba


class ClipDrawGenerator(GuidedGenerator):
    name = "clipdraw"
    title = "CLIPDraw"
    settings_cls = DrawSettings
    tiny_label = "CLIPDraw steered by a tiny random-initialised CLIP (no trained weights; the strokes are random)"

    def make_canvas(self, s: DrawSettings, width: int, height: int, gen: torch.Generator, device: torch.device,
                    init: torch.Tensor | None, init_path: Path | None) -> Canvas:
        if s.min_width > s.max_width:
            raise ValueError(f"generator 'clipdraw': min_width {s.min_width} is above max_width {s.max_width}")
        ctrl, widths, rgba = initial_strokes(s.strokes, width, height, s.radius,
                                             min(max(s.init_width, s.min_width), s.max_width), s.opaque, gen)
        if init is not None:
            # Start each stroke in the colour of the init picture under its first point.
            ix = ctrl[:, 0, 0].clamp(0, width - 1).long()
            iy = ctrl[:, 0, 1].clamp(0, height - 1).long()
            rgba[:, :3] = init[0].cpu()[:, iy, ix].t()
        params = [t.to(device).requires_grad_(True) for t in (ctrl, widths, rgba)]
        background = s.background

        def image(ps: Sequence[torch.Tensor]) -> torch.Tensor:
            c, w, col = ps
            return rasterise(c.float(), w.float(), col.float(), background, height, width, s.samples)

        def constrain(ps: Sequence[torch.Tensor]) -> None:
            c, w, col = ps
            w.clamp_(s.min_width, s.max_width)
            col.clamp_(0, 1)
            if s.opaque:
                col[:, 3] = 1.0

        def save_extra(ps: Sequence[torch.Tensor], work_dir: Path) -> dict[str, Path]:
            c, w, col = (t.detach().float().cpu() for t in ps)
            dest = Path(work_dir) / "drawing.svg"
            with atomic_path(dest, suffix=".svg") as tmp:
                Path(tmp).write_text(to_svg(c, w, col, background, height, width), encoding="utf-8")
            return {"drawing": dest}

        def warp(ps: Sequence[torch.Tensor], matrix: torch.Tensor) -> None:
            c, w, _ = ps
            c.copy_(warp_points(c, matrix))
            w.mul_(float(torch.linalg.det(matrix[:, :2].double()).abs().sqrt()))

        return Canvas(params=params, image=image, constrain=constrain, lr_scale=[1.0, 0.1, 0.01],
                      save_extra=save_extra, warp=warp, meta={"strokes": s.strokes})


@register("clipdraw")
def factory(settings: Mapping[str, Any], ctx: RenderContext) -> ClipDrawGenerator:
    return ClipDrawGenerator(ClipDrawGenerator.parse(settings), ctx)


__all__ = ["ClipDrawGenerator", "rasterise", "to_svg"]
