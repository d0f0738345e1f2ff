"""Pieces that move while they are made: a story (prompts changing over the run) and zoom-and-rotate.

``story``: the prompts change at given steps, as in the 2021 "zoom" / "story"
notebooks.  Either a list of prompt texts (``text:weight|...``), spread evenly over
the run, or a list of tables ``{at = STEP, prompt = "..."}`` (the first at 0).

``zoom``: every ``every`` steps the picture is scaled by ``scale`` about its
centre, rotated by ``rotate`` degrees and shifted by ``shift = [dx, dy]`` pixels,
and the generator's parameters are set from the warped picture (exactly for
pixels and Fourier, through the encoder for VQGAN, by moving the control points
for CLIPDraw); Adam's moments start afresh.  The timelapse (one frame per zoom
step unless ``timelapse`` says otherwise) is the moving piece.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch

from exhibits.prompts import PromptError, parse_prompts


@dataclass(frozen=True)
class Zoom:
    every: int = 10
    scale: float = 1.02
    rotate: float = 0.0
    shift: tuple[float, float] = (0.0, 0.0)


def parse_zoom(v: Any) -> Zoom | None:
    """A ``zoom`` table -> Zoom; ValueError says what is allowed."""
    allowed = "a table {every = N >= 1, scale = 0.5..2, rotate = degrees -45..45, shift = [dx, dy] pixels}"
    if v is None or v is False or v == {}:
        return None
    if isinstance(v, Zoom):
        return v
    if not isinstance(v, Mapping) or set(v) - {"every", "scale", "rotate", "shift"}:
        raise ValueError(allowed)
    every, scale, rotate = v.get("every", 10), v.get("scale", 1.02), v.get("rotate", 0.0)
    shift = v.get("shift", (0.0, 0.0))
    num = (int, float)
    if (not isinstance(every, int) or isinstance(every, bool) or every < 1
            or not isinstance(scale, num) or isinstance(scale, bool) or not 0.5 <= scale <= 2
            or not isinstance(rotate, num) or isinstance(rotate, bool) or not -45 <= rotate <= 45
            or not isinstance(shift, (list, tuple)) or len(shift) != 2
            or not all(isinstance(x, num) and not isinstance(x, bool) for x in shift)):
        raise ValueError(allowed)
    return Zoom(int(every), float(scale), float(rotate), (float(shift[0]), float(shift[1])))


def parse_story(v: Any) -> tuple[tuple[int | None, str], ...]:
    """``story`` -> ((at or None, prompt text), ...); None = spread evenly.  ValueError names the bad entry."""
    if not isinstance(v, (list, tuple)) or not v:
        raise ValueError("a non-empty list of prompts, or of tables {at = STEP, prompt = \"...\"}")
    out: list[tuple[int | None, str]] = []
    for i, item in enumerate(v):
        if isinstance(item, str):
            at, text = None, item
        elif isinstance(item, Mapping) and set(item) <= {"at", "prompt"} and "prompt" in item:
            at, text = item.get("at"), item["prompt"]
            if not isinstance(at, int) or isinstance(at, bool) or at < 0:
                raise ValueError(f"story[{i}].at must be a step number >= 0, got {at!r}")
        else:
            raise ValueError(f"story[{i}] must be a prompt text or a table {{at, prompt}}, got {item!r}")
        try:
            prompts = parse_prompts(text)
        except PromptError as exc:
            raise ValueError(f"story[{i}]: {exc}") from None
        if not any(p.weight > 0 for p in prompts):
            raise ValueError(f"story[{i}] needs a prompt with a positive weight")
        out.append((at, text))
    kinds = {at is None for at, _ in out}
    if len(kinds) > 1:
        raise ValueError("story entries are either all plain prompts or all tables with 'at'")
    if out[0][0] is not None:
        steps = [at for at, _ in out]
        if steps[0] != 0 or steps != sorted(set(steps)):
            raise ValueError(f"story 'at' steps must start at 0 and increase, got {steps}")
    return tuple(out)


def story_schedule(story: Sequence[tuple[int | None, str]], steps: int) -> list[tuple[int, list[tuple[str, float]]]]:
    """[(first step, [(text, weight), ...]), ...] with even spacing where no ``at`` is given."""
    n = len(story)
    out = []
    for i, (at, text) in enumerate(story):
        start = at if at is not None else (i * steps) // n
        out.append((start, [(p.text, p.weight) for p in parse_prompts(text) if p.weight != 0]))
    return out


class StoryTerm:
    """The CLIP term of the story's current chapter (one prepared term per chapter)."""

    def __init__(self, chapters: Sequence[tuple[int, Any]]):
        self.chapters = list(chapters)

    def active(self, step: int) -> Any:
        term = self.chapters[0][1]
        for start, t in self.chapters:
            if step >= start:
                term = t
        return term

    def __call__(self, image: torch.Tensor, step: int) -> dict[str, torch.Tensor]:
        return self.active(step)(image, step)


def zoom_matrix(zoom: Zoom, width: int, height: int) -> torch.Tensor:
    """(2, 3) affine, pixel coordinates: scale and rotate about the centre, then shift."""
    cx, cy = (width - 1) / 2, (height - 1) / 2  # pixel-index coordinates: pixel i's centre is at i
    a = math.radians(zoom.rotate)
    c, s = math.cos(a) * zoom.scale, math.sin(a) * zoom.scale
    return torch.tensor([[c, -s, cx - c * cx + s * cy + zoom.shift[0]],
                         [s, c, cy - s * cx - c * cy + zoom.shift[1]]], dtype=torch.float32)


def warp_image(image: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
    """Warp (1, C, H, W) by the (2, 3) forward affine (source pixel -> destination pixel), reflecting at borders."""
    import kornia

    return kornia.geometry.transform.warp_affine(image.float(), matrix[None].to(image.device), image.shape[-2:],
                                                 mode="bilinear", padding_mode="reflection", align_corners=False)


def warp_points(points: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
    """Apply the (2, 3) affine to (..., 2) pixel coordinates (pixel centres at +0.5, as the rasteriser uses)."""
    m = matrix.to(points.device, points.dtype)
    return points @ m[:, :2].t() + m[:, 2] - 0.5 * (m[:, :2].sum(1) - 1)
