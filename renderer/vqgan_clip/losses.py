"""Loss terms composed around the generator: CLIP prompts (panorama-weighted), and three symmetries.

Every term is a callable ``term(image, step) -> {name: scalar tensor}`` already
multiplied by its weight; :func:`renderer.guidance.loop.optimise` sums them.

- Panoramas: positive prompts are spread left..right (2: left/right, 3:
  left/centre/right); each cutout's loss against a prompt is weighted by an
  interpolation function of the cutout's x-centre; per cutout the weights sum to
  1.  Negative prompts apply everywhere.
- Edge symmetry: Sobel magnitude of the greyscale image, blurred, against its
  mirror image, squared.
- Tone symmetry: the greyscale image, blurred, against its mirror image, L1.
- Semantic symmetry: for mirrored cutout pairs, maximise
  cos(patch1 - text1, patch2 - text2).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from renderer.vqgan_clip import cutouts as cut
from renderer.vqgan_clip.clip_guidance import ClipModel, prompt_loss, semantic_symmetry_loss

INTERPOLATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "linear": lambda t: t,
    "cosine": lambda t: (1 - torch.cos(math.pi * t)) / 2,
    "smoothstep": lambda t: t * t * (3 - 2 * t),
}
PANORAMA_MODES = ("none", *INTERPOLATIONS)


def panorama_weights(x_centre: torch.Tensor, n_prompts: int, interp: str = "linear") -> torch.Tensor:
    """(N, P) weights of ``n_prompts`` anchored evenly from the left edge (0) to the right edge (1).

    Between neighbouring anchors a and b the weight moves from a to b by ``interp(t)``; rows sum to 1.
    """
    if interp not in INTERPOLATIONS:
        raise ValueError(f"panorama interpolation {interp!r}; allowed: {', '.join(INTERPOLATIONS)}")
    x = x_centre.to(torch.float32).clamp(0, 1)
    n = x.shape[0]
    if n_prompts <= 1:
        return torch.ones(n, max(n_prompts, 1))
    pos = x * (n_prompts - 1)
    left = pos.floor().clamp(max=n_prompts - 2).long()
    t = INTERPOLATIONS[interp](pos - left)
    w = torch.zeros(n, n_prompts)
    w.scatter_(1, left[:, None], (1 - t)[:, None])
    w.scatter_add_(1, (left + 1)[:, None], t[:, None])
    return w


def prompt_position_weights(x_centre: torch.Tensor, prompt_weights: torch.Tensor, mode: str) -> torch.Tensor:
    """Position weights for every prompt: positive prompts spread by ``mode``, negative ones everywhere."""
    if mode not in PANORAMA_MODES:
        raise ValueError(f"panorama {mode!r}; allowed: {', '.join(PANORAMA_MODES)}")
    n, p = x_centre.shape[0], prompt_weights.shape[0]
    out = torch.ones(n, p)
    positive = (prompt_weights > 0).nonzero().flatten()
    if mode != "none" and positive.numel() > 1:
        out[:, positive] = panorama_weights(x_centre, int(positive.numel()), mode)
    return out


def _grey(image: torch.Tensor) -> torch.Tensor:
    return 0.299 * image[:, 0:1] + 0.587 * image[:, 1:2] + 0.114 * image[:, 2:3]


def _shrink_blur(x: torch.Tensor, work_width: int, sigma: float) -> torch.Tensor:
    """Area-downscale to about ``work_width`` pixels wide, then a Gaussian blur (cheap at any canvas size)."""
    import kornia

    w = x.shape[-1]
    if w > work_width:
        f = math.ceil(w / work_width)
        x = F.avg_pool2d(x, f, ceil_mode=True)
    k = 2 * math.ceil(2 * sigma) + 1
    return kornia.filters.gaussian_blur2d(x, (k, k), (sigma, sigma), border_type="reflect")


def edge_symmetry(image: torch.Tensor, work_width: int = 128, sigma: float = 2.0) -> torch.Tensor:
    """Mean squared difference between blurred Sobel edges and their left-right mirror."""
    import kornia

    g = _grey(image.float())
    if g.shape[-1] > work_width:
        g = F.avg_pool2d(g, math.ceil(g.shape[-1] / work_width), ceil_mode=True)
    e = _shrink_blur(kornia.filters.sobel(g), work_width, sigma)
    return (e - e.flip(-1)).pow(2).mean()


def tone_symmetry(image: torch.Tensor, work_width: int = 64, sigma: float = 2.0) -> torch.Tensor:
    """Mean absolute difference between the blurred greyscale image and its mirror (L1)."""
    g = _shrink_blur(_grey(image.float()), work_width, sigma)
    return (g - g.flip(-1)).abs().mean()


@dataclass
class SymmetryTerm:
    """Edge and tone symmetry, each with its own weight (0 disables it)."""

    edge: float = 0.0
    tone: float = 0.0

    def __call__(self, image: torch.Tensor, step: int) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        if self.edge:
            out["edge_symmetry"] = self.edge * edge_symmetry(image)
        if self.tone:
            out["tone_symmetry"] = self.tone * tone_symmetry(image)
        return out


def schedule_value(value: float | Sequence[float], step: int, total: int) -> float:
    """A number, or ``[start, end]`` moved linearly over the run."""
    if isinstance(value, (int, float)):
        return float(value)
    start, end = float(value[0]), float(value[1])
    t = step / max(1, total - 1)
    return start + (end - start) * t


@dataclass
class ClipTerm:
    """CLIP prompt loss over batched cutouts, panorama weights, and semantic symmetry on mirrored pairs."""

    clips: Sequence[ClipModel]
    targets: Sequence[torch.Tensor]  # per CLIP model: (P, D) text embeddings
    prompt_weights: torch.Tensor  # (P,)
    generator: torch.Generator
    cutouts: int = 32
    cut_pow: float | Sequence[float] = 1.0
    panorama: str = "linear"
    semantic: float = 0.0
    mirror_fraction: float = 0.5  # share of cutouts drawn as mirrored pairs when semantic > 0
    augment: cut.AugmentConfig | None = field(default_factory=cut.AugmentConfig)
    total_steps: int = 1
    last_boxes: cut.Boxes | None = None

    def __call__(self, image: torch.Tensor, step: int) -> dict[str, torch.Tensor]:
        _, _, h, w = image.shape
        pairs = int(self.cutouts * self.mirror_fraction) // 2 if self.semantic else 0
        min_cut = min(c.size for c in self.clips)
        pw = schedule_value(self.cut_pow, step, self.total_steps)
        boxes = cut.sample_boxes(self.cutouts, w, h, min_cut, pw, self.generator, mirror_pairs=pairs)
        aug = cut.sample_augment(boxes, self.augment, self.generator) if self.augment else None
        self.last_boxes = boxes
        posw = prompt_position_weights(boxes.x_centre, self.prompt_weights, self.panorama).to(image.device)
        weights = self.prompt_weights.to(image.device)
        positive = self.prompt_weights > 0
        prompt = image.new_zeros((), dtype=torch.float32)
        semantic = image.new_zeros((), dtype=torch.float32)
        for clip, target in zip(self.clips, self.targets):
            batch = cut.make_cutouts(image, boxes, clip.size, aug)
            emb = clip.encode_image(batch)
            prompt = prompt + prompt_loss(emb, target, weights, posw)
            if pairs and bool(positive.any()):
                mix = posw[:, positive.to(posw.device)]
                mix = mix / mix.sum(1, keepdim=True)
                semantic = semantic + semantic_symmetry_loss(emb, target[positive.to(target.device)], mix, pairs)
        k = len(self.clips)
        out = {"prompts": prompt / k}
        if pairs:
            out["semantic_symmetry"] = self.semantic * semantic / k
        return out
