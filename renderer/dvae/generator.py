"""The ``dvae_clip`` generator: DALL-E's dVAE decoder steered by CLIP through Gumbel-softmax token logits.

The optimised parameters are token logits ``(1, vocab, H/8, W/8)``.  Each step
draws Gumbel noise (from the job's seeded generator, so a resumed piece continues
exactly), takes ``softmax((logits + g) / tau)`` over the vocabulary (``hard``:
the straight-through one-hot of its argmax), decodes, and maps the decoder's
logit-Laplace means back to pixels.  With an init image (setting or the job's),
the logits start from the dVAE encoder's reading of that picture.

Settings: ``dvae`` (``"dall-e-dvae"`` from ``fetch-models``, a path to a ``decoder.pkl``
with ``encoder.pkl`` optional beside it, or ``"tiny"``); ``tau`` (1.0); ``hard``
(false); ``init_scale`` (1.0: std of the random starting logits); ``init_image``;
``clip_models``, ``steps`` (300), ``lr`` (0.1), ``lr_schedule``, ``lr_min_frac``,
``cutouts`` (32), ``cut_pow``, ``augment``, ``checkpoint_every``, ``progress_every``,
``seed``, ``amp`` as for ``vqgan_clip``.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn.functional as F

from renderer import clip_steered as cs
from renderer.base import GeneratorUnavailable, RenderContext, RenderRequest, RenderResult, register
from renderer.checkpoint_io import CheckpointError
from renderer.dvae.model import (Decoder, Encoder, activation_bytes, load_decoder, load_encoder, map_pixels,
                                 random_decoder, random_encoder, tiny_decoder_config, tiny_encoder_config)
from renderer.vqgan_clip.generator import file_sha256
from renderer.vqgan_clip.optimise import to_pil

log = logging.getLogger(__name__)

NAME = "dvae_clip"
TINY_LABEL = "dVAE+CLIP with tiny random-initialised models (noise demo, no trained weights)"
DEFAULTS: dict[str, Any] = {**cs.COMMON_DEFAULTS, "lr": 0.1, "dvae": "dall-e-dvae", "tau": 1.0, "hard": False,
                            "init_scale": 1.0, "init_image": None}


def parse_settings(raw: Mapping[str, Any], strict: bool = True) -> dict[str, Any]:
    r = cs.SettingsReader(NAME, raw, DEFAULTS, strict)
    s = r.common()
    init = r.get("init_image")
    if init is not None and not (isinstance(init, str) and init):
        raise cs.bad_setting(NAME, "init_image", init, "a path to a picture")
    s.update(dvae=r.text("dvae", "a checkpoint name (dall-e-dvae), a path to a decoder.pkl, or 'tiny'"),
             tau=r.number("tau"), hard=r.boolean("hard"), init_scale=r.number("init_scale"), init_image=init)
    return s


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


class DvaeClipGenerator(cs.SteeredGenerator):
    name = NAME
    title = "dVAE+CLIP"
    model_key = "dvae"
    tiny_label = TINY_LABEL

    def load_model(self, spec: str) -> tuple[Decoder, Encoder | None, dict]:
        if spec == "tiny":
            dec, enc = random_decoder(tiny_decoder_config()), random_encoder(tiny_encoder_config())
            ident = cs.ModelIdent("tiny")
        else:
            dec_path, enc_path = resolve_files(spec, self.weights_dir)
            dec = load_decoder(dec_path)
            enc = load_encoder(enc_path) if enc_path else None
            if enc is not None and enc.cfg.vocab_size != dec.cfg.vocab_size:
                raise CheckpointError(f"{enc_path}: the encoder has {enc.cfg.vocab_size} tokens, the decoder "
                                      f"{dec.cfg.vocab_size}")
            ident = cs.ModelIdent(spec, dec_path.name, file_sha256(dec_path))
        return dec.to(self.device), enc.to(self.device) if enc else None, ident.as_dict()

    def render(self, req: RenderRequest, ctx: RenderContext) -> RenderResult:
        s = parse_settings(cs.merged_params(self.settings, req), strict=False)
        device = torch.device(ctx.device)
        dec, enc, ident = self.model(s["dvae"])
        clips = self.clips.many(s["clip_models"])
        prompts = cs.weighted_prompts(req, NAME)
        f = Decoder.factor
        width, height = max(f, req.width // f * f), max(f, req.height // f * f)
        free = cs.available_bytes(device)
        act = 2 if (s["amp"] and ctx.dtype in (torch.bfloat16, torch.float16)) else 4
        clip_bytes = cs.clip_step_bytes([c for c, _ in clips], s["cutouts"], act)
        cs.check_fits(lambda w, h: estimate_bytes(dec, w, h, clip_bytes, act), width, height, f, free, "dVAE+CLIP")
        seed = s["seed"] if s["seed"] is not None else req.seed
        gen = torch.Generator().manual_seed(seed)
        torch.manual_seed(seed)
        init_path = Path(s["init_image"]) if s["init_image"] else req.init_image
        if init_path is not None:
            if enc is None:
                raise GeneratorUnavailable(f"an init image needs the dVAE encoder beside {s['dvae']} (encoder.pkl)")
            with torch.no_grad():
                logits0 = enc(map_pixels(cs.load_init_image(init_path, width, height).to(device))).float()
        else:
            logits0 = torch.randn(1, dec.cfg.vocab_size, height // f, width // f, generator=gen) * s["init_scale"]
        logits = logits0.to(device).requires_grad_(True)

        def generate(p: torch.Tensor) -> torch.Tensor:
            return dec.pixels(gumbel_softmax(p, s["tau"], s["hard"], gen))

        term = cs.clip_term([c for c, _ in clips], prompts, device, gen, s)
        fp = cs.fingerprint(generator=NAME, s=s, prompts=prompts, seed=seed, w=width, h=height,
                            init=file_sha256(init_path) if init_path and init_path.is_file() else None)
        res = cs.run_loop(logits, generate, [term], s, ctx, [gen], fp)
        meta = {
            "generator": NAME, "label": self.label_for(s), "seed": seed, "width": width, "height": height,
            "prompt": "|".join(f"{t}:{w:g}" for t, w in prompts), "prompts": [list(p) for p in prompts],
            "models": {"dvae": ident, "clip": [i for _, i in clips]},
            "params": {k: list(v) if isinstance(v, tuple) else v for k, v in s.items()},
            "init_image": str(init_path) if init_path else None, "steps_done": res.steps_done,
            "resumed_from": res.resumed_from, "losses": res.losses, "seconds": round(res.seconds, 2),
        }
        return RenderResult(image=to_pil(res.image), meta=meta)


@register(NAME)
def factory(settings: Mapping[str, Any], ctx: RenderContext) -> DvaeClipGenerator:
    return DvaeClipGenerator(parse_settings(settings), ctx)
