"""CLIPDraw's pure-PyTorch rasteriser against analytic coverage, and its SVG."""
from __future__ import annotations

import math
import xml.etree.ElementTree as ET

import pytest
import torch

from renderer.family.clipdraw import rasterise, stroke_coverage, to_svg


def _line(x0, y, x1, width):
    ctrl = torch.tensor([[[x0, y], [x0 + (x1 - x0) / 3, y], [x0 + 2 * (x1 - x0) / 3, y], [x1, y]]])
    return ctrl, torch.tensor([width])


@pytest.mark.parametrize("y,width", [(10.27, 3.3), (15.5, 1.0), (8.0, 6.75)])
def test_horizontal_stroke_covers_each_pixel_by_its_area_inside_the_band(y, width):
    ctrl, w = _line(-5.0, y, 45.0, width)  # runs past both edges: no caps on the canvas
    cov = stroke_coverage(ctrl, w, 24, 40, samples=8)[0]
    rows = torch.arange(24, dtype=torch.float32)
    lo, hi = y - width / 2, y + width / 2
    exact = (torch.minimum(rows + 1, torch.tensor(hi)) - torch.maximum(rows, torch.tensor(lo))).clamp(0, 1)
    assert torch.allclose(cov, exact[:, None].expand(24, 40), atol=1e-5)
    assert cov.sum().item() == pytest.approx(width * 40, rel=1e-5)


def _capsule_coverage(a, b, radius, h, w, k=16):
    """Exact-by-supersampling coverage of each pixel by the capsule (segment a-b widened by radius)."""
    off = (torch.arange(k, dtype=torch.float64) + 0.5) / k
    ys = (torch.arange(h, dtype=torch.float64)[:, None] + off[None]).reshape(-1)
    xs = (torch.arange(w, dtype=torch.float64)[:, None] + off[None]).reshape(-1)
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    a, b = torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64)
    ab = b - a
    t = (((gx - a[0]) * ab[0] + (gy - a[1]) * ab[1]) / max(float(ab @ ab), 1e-12)).clamp(0, 1)
    d = torch.hypot(gx - a[0] - t * ab[0], gy - a[1] - t * ab[1])
    inside = (d <= radius).double()
    return inside.reshape(h, k, w, k).mean(dim=(1, 3)).float()


def test_diagonal_stroke_and_round_dot_match_supersampled_coverage():
    # A 45-degree stroke between two interior points (round caps), and a degenerate stroke: a disc.
    ctrl = torch.tensor([[[10.0, 10.0], [20.0, 20.0], [30.0, 30.0], [40.0, 40.0]]])
    cov = stroke_coverage(ctrl, torch.tensor([4.0]), 50, 50, samples=16)[0]
    exact = _capsule_coverage((10.0, 10.0), (40.0, 40.0), 2.0, 50, 50)
    assert (cov - exact).abs().max() < 0.15  # a 1-px linear ramp vs the true box filter on a slanted edge
    assert cov.sum().item() == pytest.approx(math.hypot(30, 30) * 4 + math.pi * 4, rel=0.025)
    dot = torch.tensor([[[20.3, 17.8]] * 4])
    area = stroke_coverage(dot, torch.tensor([9.0]), 40, 40, samples=4)[0]
    exact = _capsule_coverage((20.3, 17.8), (20.3, 17.8), 4.5, 40, 40)
    assert (area - exact).abs().max() < 0.15
    assert area.sum().item() == pytest.approx(math.pi * 4.5 ** 2, rel=0.01)


def test_curve_follows_the_bezier_and_strokes_composite_in_order():
    # Quadratic-like arch: the stroke's top passes through B(0.5) = (p0 + 3p1 + 3p2 + p3) / 8.
    ctrl = torch.tensor([[[4.0, 28.0], [10.0, 4.0], [22.0, 4.0], [28.0, 28.0]]])
    cov = stroke_coverage(ctrl, torch.tensor([2.0]), 32, 32, samples=32)[0]
    top_y = (28 + 3 * 4 + 3 * 4 + 28) / 8  # 10.0
    assert cov[int(top_y), 16] > 0.9 and cov[int(top_y) - 3, 16] == 0
    red = torch.tensor([[1.0, 0.0, 0.0, 1.0], [0.0, 0.0, 1.0, 0.5]])
    two = torch.cat([_line(0, 8.0, 32, 4.0)[0], _line(0, 8.0, 32, 4.0)[0]])
    img = rasterise(two, torch.tensor([4.0, 4.0]), red, (1.0, 1.0, 1.0), 16, 32, samples=4)
    # red fully, then half-transparent blue over it: (0.5, 0, 0.5); background stays white
    assert torch.allclose(img[0, :, 8, 16], torch.tensor([0.5, 0.0, 0.5]), atol=1e-6)
    assert torch.allclose(img[0, :, 0, 16], torch.ones(3))


def test_svg_carries_every_stroke_in_order():
    ctrl = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [5.0, 6.0], [7.0, 8.0]], [[0.0, 0.0], [1.0, 1.0], [2, 2], [3, 3]]])
    svg = to_svg(ctrl, torch.tensor([2.5, 1.0]), torch.tensor([[1.0, 0.0, 0.0, 0.5], [0, 0, 1, 1.0]]),
                 (1.0, 1.0, 1.0), 20, 30)
    root = ET.fromstring(svg)
    ns = "{http://www.w3.org/2000/svg}"
    paths = root.findall(f"{ns}path")
    assert root.get("viewBox") == "0 0 30 20" and len(paths) == 2
    assert paths[0].get("d") == "M 1.000 2.000 C 3.000 4.000 5.000 6.000 7.000 8.000"
    assert paths[0].get("stroke") == "rgb(255,0,0)" and float(paths[0].get("stroke-opacity")) == 0.5
    assert float(paths[0].get("stroke-width")) == 2.5 and paths[1].get("stroke") == "rgb(0,0,255)"
