"""The ``dvae_clip`` generator: DALL-E's dVAE decoder steered by CLIP through Gumbel-softmax token logits.

The optimised parameters are token logits ``(1, vocab, H/8, W/8)``.  Each step
draws Gumbel noise (from the job's seeded generator, so a resumed piece continues
exactly), takes ``softmax((logits + g) / tau)`` over the vocabulary (``hard``:
the straight-through one-hot of its argmax), decodes, and maps the decoder's
logit-Laplace means back to pixels.  With an init image (setting or the job's),
the logits start from the dVAE encoder's reading of that picture.

Settings: ``dvae`` (``"dall-e-dvae"`` from ``fetch-models``, a path to a ``decoder.pkl``
with ``encoder.pkl`` optional beside it, or ``"tiny"``); ``tau`` (1.0); ``hard``
(false); ``init_scale`` (1.0: std of the random starting logits); and every setting of the
shared guidance host (:mod:`renderer.guidance.host`): ``clip_models``, ``steps`` (300), ``lr`` (0.1),
``cutouts`` (32), ``panorama`` (default ``"none"``), ``symmetry``, ``timelapse``, ``init_image``,
``checkpoint_every``, ``progress_every``, ``seed``, ``amp`` ...
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F

from renderer import clip_steered as cs
from renderer.base import GeneratorUnavailable, RenderContext, register
from renderer.dvae.model import (Decoder, Encoder, activation_bytes, load_decoder, load_encoder, map_pixels,
                                 random_decoder, random_encoder, tiny_decoder_config, tiny_encoder_config)
from renderer.guidance.host import Canvas, GuidanceSettings, GuidedGenerator, file_sha256
from renderer.vqgan_clip.clip_guidance import ClipModel

log = logging.getLogger(__name__)

NAME = "dvae_clip"
TINY_LABEL = "dVAE+CLIP with tiny random-initialised models (noise demo, no trained weights)"


_spec = cs.model_spec("a checkpoint name (dall-e-dvae), a path to a decoder.pkl, or 'tiny'")


@dataclass(frozen=True)
class Settings(GuidanceSettings):
    panorama: str = "none"
    dvae: str = field(default="dall-e-dvae", metadata={"check": _spec})
    tau: float = 1.0
    hard: bool = False
    init_scale: float = 1.0

    @property
    def tiny(self) -> bool:
        return self.dvae == "tiny" or "tiny" in self.clip_models


def parse_settings(raw: Mapping[str, Any], strict: bool = True) -> Settings:
    return DvaeClipGenerator.parse(raw, strict)


def resolve_files(spec: str, weights_dir: Path) -> tuple[Path, Path | None]:
    """(decoder.pkl, encoder.pkl or None) for a registry name or a path; the fetch command when missing."""
    installed = cs.registry_files(spec, "dvae", weights_dir, "dVAE")
    if installed is not None:
        return installed[0], installed[1]
    path = Path(spec).expanduser()
    if not path.is_file():
        raise GeneratorUnavailable(f"setting 'dvae' = {spec!r}: not a known checkpoint (dall-e-dvae, tiny) "
                                   "nor a decoder.pkl file")
    enc = path.with_name(path.name.replace("decoder", "encoder"))
    return path, enc if enc != path and enc.is_file() else None


def gumbel_softmax(logits: torch.Tensor, tau: float, hard: bool, gen: torch.Generator) -> torch.Tensor:
    """Gumbel-softmax over dim 1 with noise from ``gen`` (reproducible and resumable)."""
    u = torch.rand(logits.shape, generator=gen).clamp(1e-10, 1 - 1e-7).to(logits.device, logits.dtype)
    y = F.softmax((logits - torch.log(-torch.log(u))) / tau, dim=1)
    if not hard:
        return y
    one_hot = torch.zeros_like(y).scatter_(1, y.argmax(1, keepdim=True), 1.0)
    return one_hot - y.detach() + y


def estimate_bytes(dec: Decoder, width: int, height: int, clip_bytes: int, act_bytes: int = 4) -> int:
    n_params = sum(p.numel() for p in dec.parameters())
    return int((4 * n_params + activation_bytes(dec.cfg, width, height, act_bytes) + clip_bytes) * 1.25
               + 256 * 2**20)


class DvaeClipGenerator(GuidedGenerator):
    """DALL-E dVAE token logits as the canvas of the shared guidance host."""

    name = NAME
    settings_cls = Settings
    tiny_label = TINY_LABEL
    title = "dVAE+CLIP"

    def __init__(self, settings: Settings, ctx: RenderContext):
        self._models: dict[str, tuple[Decoder, Encoder | None, dict]] = {}
        super().__init__(settings, ctx)

    def _label(self, s: Settings) -> str:
        if s.tiny:
            return TINY_LABEL
        return f"dVAE+CLIP ({Path(s.dvae).stem} guided by {', '.join(s.clip_models)})"

    def _model(self, spec: str) -> tuple[Decoder, Encoder | None, dict]:
        if spec not in self._models:
            if spec == "tiny":
                dec, enc = random_decoder(tiny_decoder_config()), random_encoder(tiny_encoder_config())
                ident = cs.ModelIdent("tiny")
            else:
                dec_path, enc_path = resolve_files(spec, self.weights_dir)
                dec = cs.checked_load(load_decoder, dec_path)
                enc = cs.checked_load(load_encoder, enc_path) if enc_path else None
                if enc is not None and enc.cfg.vocab_size != dec.cfg.vocab_size:
                    raise GeneratorUnavailable(f"{enc_path}: the encoder has {enc.cfg.vocab_size} tokens, the "
                                               f"decoder {dec.cfg.vocab_size}")
                ident = cs.ModelIdent(spec, dec_path.name, file_sha256(dec_path))
            self._models[spec] = (dec.to(self.device), enc.to(self.device) if enc else None, ident.as_dict())
        return self._models[spec]

    def prepare(self, s: Settings) -> None:
        self._model(s.dvae)

    def model_ids(self, s: Settings) -> dict[str, Any]:
        return {"dvae": self._model(s.dvae)[2]}

    def canvas_size(self, s: Settings, width: int, height: int) -> tuple[int, int]:
        f = Decoder.factor
        return max(f, width // f * f), max(f, height // f * f)

    def check_memory(self, s: Settings, clips: Sequence[ClipModel], width: int, height: int,
                     ctx: RenderContext) -> None:
        dec = self._model(s.dvae)[0]
        act = 2 if (s.amp and ctx.dtype in (torch.bfloat16, torch.float16)) else 4
        clip_bytes = cs.clip_step_bytes(clips, s.cutouts, act)
        cs.check_fits(lambda w, h: estimate_bytes(dec, w, h, clip_bytes, act), width, height, Decoder.factor,
                      cs.available_bytes(self.device), "dVAE+CLIP")

    def make_canvas(self, s: Settings, width: int, height: int, gen: torch.Generator, device: torch.device,
                    init: torch.Tensor | None, init_path: Path | None) -> Canvas:
        dec, enc, _ = self._model(s.dvae)
        f = Decoder.factor
        if init is not None:
            if enc is None:
                raise GeneratorUnavailable(f"an init image needs the dVAE encoder beside {s.dvae} (encoder.pkl)")
            with torch.no_grad():
                logits0 = enc(map_pixels(init)).float()
        else:
            logits0 = torch.randn(1, dec.cfg.vocab_size, height // f, width // f, generator=gen) * s.init_scale
        logits = logits0.to(device).requires_grad_(True)
        return Canvas(params=logits, image=lambda p: dec.pixels(gumbel_softmax(p, s.tau, s.hard, gen)))


@register(NAME)
def factory(settings: Mapping[str, Any], ctx: RenderContext) -> DvaeClipGenerator:
    return DvaeClipGenerator(parse_settings(settings), ctx)
