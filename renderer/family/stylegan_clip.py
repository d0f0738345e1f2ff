"""``stylegan_clip``: W or W+ of a StyleGAN (the Strange Attractions networks) steered by CLIP.

The start is the mapping network's w for the piece's seed (z drawn from the seed,
truncated by ``truncation_psi`` through ``w_avg``), or ``w_avg`` itself with
``start = "mean"``.  ``space = "w"`` optimises one w shared by every layer (stays
on the network's manifold, gentler); ``"w+"`` one per layer (freer, the usual
StyleGAN+CLIP notebook choice).  The synthesis network's output is scaled to
cover the canvas and centre-cropped.

Settings beyond the shared ones: ``checkpoint`` (required: a registry name or a
path, any format the StyleGAN loaders read; the mapping network comes from the same
file), ``space`` (``"w+"``), ``start`` (``"z"`` | ``"mean"``), ``truncation_psi``
(0.7), ``truncation_cutoff`` (0 = every layer), ``noise_mode`` (``"const"`` |
``"none"``), ``init_fit_steps`` (100: with an init image, W is first fitted to it
by mean squared error -- a small projector).
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn.functional as F

from renderer.base import GeneratorUnavailable, RenderContext, register
from renderer.guidance.host import Canvas, GuidanceSettings, GuidedGenerator
from renderer.stylegan.generator import _FAMILY_LABELS, resolve_checkpoint
from renderer.stylegan.loaders import LoadedSynthesis, load_synthesis
from renderer.stylegan.mapping import MappingNetwork, load_mapping
from renderer.stylegan.unpickle import CheckpointError

log = logging.getLogger(__name__)
NAME = "stylegan_clip"


@dataclass(frozen=True)
class StyleClipSettings(GuidanceSettings):
    lr: float = 0.03
    checkpoint: str = ""
    space: str = field(default="w+", metadata={"choices": ("w", "w+")})
    start: str = field(default="z", metadata={"choices": ("z", "mean")})
    truncation_psi: float = field(default=0.7, metadata={"min": 0.0, "max": 2.0})
    truncation_cutoff: int = field(default=0, metadata={"max": 64})
    noise_mode: str = field(default="const", metadata={"choices": ("const", "none")})
    init_fit_steps: int = field(default=100, metadata={"max": 100000})


def cover_crop(img: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """Scale (bilinear, antialiased) to cover width x height and centre-crop; differentiable."""
    _, _, h, w = img.shape
    if (w, h) == (width, height):
        return img
    scale = max(width / w, height / h)
    nw, nh = max(width, math.ceil(w * scale)), max(height, math.ceil(h * scale))
    img = F.interpolate(img, size=(nh, nw), mode="bilinear", align_corners=False, antialias=scale < 1)
    top, left = (nh - height) // 2, (nw - width) // 2
    return img[:, :, top:top + height, left:left + width]


class StyleGanClipGenerator(GuidedGenerator):
    name = NAME
    title = "StyleGAN+CLIP"
    settings_cls = StyleClipSettings

    def __init__(self, settings: StyleClipSettings, ctx: RenderContext):
        self._nets: dict[str, tuple[str, LoadedSynthesis, MappingNetwork]] = {}
        super().__init__(settings, ctx)

    def prepare(self, s: StyleClipSettings) -> None:
        self._net(s.checkpoint)

    def _net(self, spec: str) -> tuple[str, LoadedSynthesis, MappingNetwork]:
        if not spec:
            raise GeneratorUnavailable(f"generator {NAME!r}: setting 'checkpoint' is required (a registry name or "
                                       "a path to a StyleGAN checkpoint)")
        if spec not in self._nets:
            try:
                name, path = resolve_checkpoint(spec, self.weights_dir)
            except GeneratorUnavailable as exc:
                raise GeneratorUnavailable(f"generator {NAME!r}, setting 'checkpoint': {exc}") from exc
            cache = self.weights_dir / ".cache" / "stylegan"
            try:
                loaded = load_synthesis(path, cache_dir=cache)
                mapping = load_mapping(path, loaded.net.num_ws, loaded.family, cache_dir=cache)
            except CheckpointError as exc:
                raise GeneratorUnavailable(f"generator {NAME!r}: {exc}") from exc
            loaded.net.to(self.device).eval().requires_grad_(False)
            loaded.net.fp16_enabled = self.device.type == "cuda" and loaded.net.has_fp16
            self._nets[spec] = (name, loaded, mapping.to(self.device))
        return self._nets[spec]

    def model_ids(self, s: StyleClipSettings) -> dict[str, Any]:
        name, loaded, _ = self._net(s.checkpoint)
        return {"stylegan": {"name": name, "family": loaded.family, "format": loaded.source_format,
                             "sha256": loaded.sha256}}

    def is_tiny(self, s: StyleClipSettings) -> bool:
        return s.tiny

    def _label(self, s: StyleClipSettings) -> str:
        name, loaded, _ = self._net(s.checkpoint)
        fam = _FAMILY_LABELS.get(loaded.family, loaded.family)
        clip = "a tiny random-initialised CLIP (no trained weights)" if s.tiny else ", ".join(s.clip_models)
        return f"{fam}+CLIP ({name}, {s.space.upper()} steered by {clip})"

    def make_canvas(self, s: StyleClipSettings, width: int, height: int, gen: torch.Generator, device: torch.device,
                    init: torch.Tensor | None, init_path: Path | None) -> Canvas:
        _, loaded, mapping = self._net(s.checkpoint)
        net = loaded.net
        cutoff = s.truncation_cutoff or None
        with torch.no_grad():
            if s.start == "mean":
                ws = mapping.w_avg[None, None].expand(1, net.num_ws, net.w_dim).clone()
            else:
                z = mapping.sample_z(1, gen).to(device)
                ws = mapping(z, s.truncation_psi, cutoff)
        p = (ws[:, 0] if s.space == "w" else ws).detach().clone().to(device).requires_grad_(True)

        def image(q: torch.Tensor) -> torch.Tensor:
            w = q[:, None].expand(1, net.num_ws, net.w_dim) if s.space == "w" else q
            img = net.synthesize(w, s.noise_mode, None)
            return cover_crop(((img.float() + 1) / 2).clamp(0, 1)[:, :3], width, height)

        if init is not None and s.init_fit_steps:
            from renderer.family.siren import fit_to_image

            err = fit_to_image([p], lambda ps: image(ps[0]), init, s.init_fit_steps, lr=0.05)
            log.info("W fitted to the init image: mean squared error %.4f", err)
        return Canvas(params=p, image=image, meta={"space": s.space, "start": s.start,
                                                   "truncation_psi": s.truncation_psi, "num_ws": net.num_ws,
                                                   "resolution": net.img_resolution})


@register(NAME)
def factory(settings: Mapping[str, Any], ctx: RenderContext) -> StyleGanClipGenerator:
    return StyleGanClipGenerator(StyleGanClipGenerator.parse(settings), ctx)
