"""``stylegan_walk``: a seamless latent loop through a StyleGAN (the Strange Attractions networks), as MP4 and GIF.

``keyframes`` latents are drawn from the piece's seed; the walk visits each in turn
and returns to the first, so the video loops without a seam.  ``space = "z"``
interpolates z spherically (slerp) and maps every frame through the mapping
network with truncation -- the classic "latent walk"; ``space = "w"`` maps the
keyframes once and interpolates w linearly.  ``space = "wplus"`` walks Strange
Attractions' own random W+ codes (``randn * sigma``), no mapping network needed.

The piece's still is the first frame; the loop is its ``animation`` (H.264 MP4) and
``animation_gif``.  Settings: ``checkpoint`` (required), ``space`` (``"z"``),
``keyframes`` (4), ``frames_per_key`` (24), ``fps`` (24), ``truncation_psi`` (0.7),
``sigma`` (1.0, for ``wplus``), ``noise_mode`` (``"const"``), ``format``
(``"both"`` | ``"mp4"`` | ``"gif"``), ``gif_max_side`` (384).
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Mapping

import torch

from renderer.base import GeneratorUnavailable, RenderCancelled, RenderContext, RenderRequest, RenderResult, register
from renderer.guidance.video import VIDEO_FORMATS, write_gif, write_mp4
from renderer.stylegan.generator import _FAMILY_LABELS, _fit, resolve_checkpoint, to_pil
from renderer.stylegan.loaders import load_synthesis
from renderer.stylegan.mapping import MappingNetwork, load_mapping
from renderer.stylegan.unpickle import CheckpointError

log = logging.getLogger(__name__)
NAME = "stylegan_walk"
SPACES = ("z", "w", "wplus")
DEFAULTS: dict[str, Any] = {"checkpoint": "", "space": "z", "keyframes": 4, "frames_per_key": 24, "fps": 24,
                            "truncation_psi": 0.7, "sigma": 1.0, "noise_mode": "const", "format": "both",
                            "gif_max_side": 384}


def _bad(key: str, value: Any, allowed: str) -> GeneratorUnavailable:
    return GeneratorUnavailable(f"generator {NAME!r}: setting {key!r} = {value!r}; allowed: {allowed}")


def parse_settings(raw: Mapping[str, Any], strict: bool = True) -> dict[str, Any]:
    unknown = sorted(set(raw) - set(DEFAULTS))
    if unknown and strict:
        raise GeneratorUnavailable(f"generator {NAME!r}: unknown setting(s) {', '.join(unknown)}; "
                                   f"allowed: {', '.join(DEFAULTS)}")
    s = {**DEFAULTS, **{k: v for k, v in raw.items() if k in DEFAULTS}}
    if not isinstance(s["checkpoint"], str) or not s["checkpoint"]:
        raise _bad("checkpoint", s["checkpoint"], "a registry name or a path to a StyleGAN checkpoint (required)")
    for key, lo, hi in (("keyframes", 2, 64), ("frames_per_key", 1, 600), ("fps", 1, 60), ("gif_max_side", 16, 4096)):
        v = s[key]
        if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
            raise _bad(key, v, f"an integer from {lo} to {hi}")
    for key, hi in (("truncation_psi", 2.0), ("sigma", 100.0)):
        v = s[key]
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not 0 <= v <= hi:
            raise _bad(key, v, f"a number from 0 to {hi}")
    for key, allowed in (("space", SPACES), ("noise_mode", ("const", "none")), ("format", VIDEO_FORMATS)):
        if s[key] not in allowed:
            raise _bad(key, s[key], ", ".join(allowed))
    return s


def slerp(a: torch.Tensor, b: torch.Tensor, t: float) -> torch.Tensor:
    """Spherical interpolation between rows of a and b (Gaussian latents keep their norm)."""
    an, bn = a / a.norm(dim=-1, keepdim=True), b / b.norm(dim=-1, keepdim=True)
    omega = torch.acos((an * bn).sum(-1, keepdim=True).clamp(-1 + 1e-7, 1 - 1e-7))
    so = torch.sin(omega)
    return (torch.sin((1 - t) * omega) / so) * a + (torch.sin(t * omega) / so) * b


def walk_ws(mapping: MappingNetwork | None, num_ws: int, w_dim: int, s: Mapping[str, Any],
            gen: torch.Generator) -> list[torch.Tensor]:
    """The loop's ws, one (1, num_ws, w_dim) per frame; frame 0 is keyframe 0 and the last precedes it again."""
    k, n = s["keyframes"], s["frames_per_key"]
    if s["space"] == "wplus":
        keys = [torch.randn(1, num_ws, w_dim, generator=gen) * float(s["sigma"]) for _ in range(k)]
    else:
        if mapping is None:
            raise GeneratorUnavailable(f"generator {NAME!r}: space {s['space']!r} needs the mapping network")
        keys = [mapping.sample_z(1, gen) for _ in range(k)]
    psi = float(s["truncation_psi"])
    if s["space"] == "w":
        keys = [mapping(z, psi) for z in keys]
    out = []
    for i in range(k):
        a, b = keys[i], keys[(i + 1) % k]
        for j in range(n):
            t = j / n
            out.append(mapping(slerp(a, b, t), psi) if s["space"] == "z" else a.lerp(b, t))
    return out


class StyleGanWalkGenerator:
    name = NAME

    def __init__(self, settings: Mapping[str, Any], ctx: RenderContext):
        self.settings = parse_settings(settings)
        self.device = torch.device(ctx.device)
        self.weights_dir = Path(ctx.weights_dir)
        try:
            self.checkpoint_name, path = resolve_checkpoint(self.settings["checkpoint"], self.weights_dir)
        except GeneratorUnavailable as exc:
            raise GeneratorUnavailable(f"generator {NAME!r}, setting 'checkpoint': {exc}") from exc
        cache = self.weights_dir / ".cache" / "stylegan"
        try:
            self.loaded = load_synthesis(path, cache_dir=cache)
            self.mapping = (load_mapping(path, self.loaded.net.num_ws, self.loaded.family, cache_dir=cache)
                            if self.settings["space"] != "wplus" else None)
        except CheckpointError as exc:
            raise GeneratorUnavailable(f"generator {NAME!r}: {exc}") from exc
        self.net = self.loaded.net.to(self.device)
        self.net.fp16_enabled = self.device.type == "cuda" and self.net.has_fp16
        fam = _FAMILY_LABELS.get(self.loaded.family, self.loaded.family)
        self.label = f"{fam} ({self.checkpoint_name}) latent loop walk"

    @torch.no_grad()
    def render(self, req: RenderRequest, ctx: RenderContext) -> RenderResult:
        s = parse_settings({**self.settings, **dict(req.params)}, strict=False)
        if s["space"] != self.settings["space"] and self.mapping is None:
            raise GeneratorUnavailable(f"generator {NAME!r}: this exhibit was loaded for space 'wplus'")
        gen = torch.Generator().manual_seed(int(req.seed) & 0xFFFF_FFFF_FFFF_FFFF)
        t0 = time.perf_counter()
        ws_list = walk_ws(self.mapping, self.net.num_ws, self.net.w_dim, s, gen)
        frames = []
        for i, ws in enumerate(ws_list):
            if ctx.should_stop():
                raise RenderCancelled(f"stopped at frame {i} of {len(ws_list)}")
            img = self.net(ws.to(self.device), noise_mode=s["noise_mode"]).float().clamp(-1, 1)
            frames.append(_fit(to_pil(img[0]), req.width, req.height))
            ctx.progress({"step": i + 1, "total": len(ws_list), "image": frames[-1]})
        work = Path(ctx.work_dir)
        work.mkdir(parents=True, exist_ok=True)
        extra: dict[str, Path] = {}
        if s["format"] in ("mp4", "both"):
            extra["animation"] = write_mp4(frames, work / "animation.mp4", s["fps"])
        if s["format"] in ("gif", "both"):
            key = "animation_gif" if extra else "animation"
            extra[key] = write_gif(frames, work / "animation.gif", s["fps"], max_side=s["gif_max_side"])
        meta = {"generator": NAME, "label": f"{self.label} ({len(frames)} frames, {s['space']} space)",
                "models": {"stylegan": {"name": self.checkpoint_name, "family": self.loaded.family,
                                        "format": self.loaded.source_format, "sha256": self.loaded.sha256}},
                "params": dict(s), "frames": len(frames), "fps": s["fps"], "seed": req.seed,
                "seconds": round(time.perf_counter() - t0, 2)}
        return RenderResult(image=frames[0], meta=meta, extra_files=extra)


@register(NAME)
def factory(settings: Mapping[str, Any], ctx: RenderContext) -> StyleGanWalkGenerator:
    return StyleGanWalkGenerator(settings, ctx)
