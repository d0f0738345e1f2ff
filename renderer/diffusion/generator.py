"""The ``clip_diffusion`` generator: OpenAI's ImageNet diffusion model sampled under CLIP guidance.

Each step runs the UNet once on the current sample (with gradients), blends its clean-image
prediction with the sample by ``sqrt(1 - alphā_t)``, scores that with the shared CLIP prompt term
over cutouts (``clip_guidance_scale``), a total-variation loss (``tv_scale``) and a range loss on the
prediction (``range_scale``), and steps the sampler with the negative gradient; the same model call
serves the step itself (the notebooks ran the model twice per step).  With an init image the run
skips the first ``skip_timesteps`` steps and starts from the picture noised to that level.

The sample, the step index and the random generator are saved to the job's work directory every
``checkpoint_every`` steps and when the worker asks it to stop; a later run resumes from them.

Settings: ``model`` (``"guided-diffusion-256"`` | ``"guided-diffusion-512"`` from ``fetch-models``, a path to a
released ``.pt`` with ``image_size`` 256 or 512, or ``"tiny"``: a random-initialised 32 px UNet, noise);
``image_size`` (0: from the name); ``steps`` (250 sampling steps of the 1000 trained); ``sampler``
(``"ddpm"`` | ``"ddim"``: DDIM reaches a comparable picture in far fewer steps, e.g. 50); ``eta`` (0.0,
DDIM's noise); ``clip_guidance_scale`` (1000); ``tv_scale`` (150); ``range_scale`` (50); ``skip_timesteps``
(0; with an init image, e.g. half the steps); ``init_image``; ``clip_models``, ``cutouts`` (16), ``cut_pow``,
``augment``, ``checkpoint_every`` (25), ``progress_every`` (5), ``seed``, ``amp`` from the guidance host.
"""
from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch

from renderer import clip_steered as cs
from renderer.base import GeneratorUnavailable, RenderCancelled, RenderContext, RenderRequest, RenderResult, register
from renderer.diffusion.sampling import SAMPLERS, Diffusion, kept_timesteps, range_loss, tv_loss
from renderer.diffusion.unet import CONFIGS, UNet, activation_bytes, load_unet, random_unet, tiny_config
from renderer.guidance.host import GuidanceSettings, GuidedGenerator, file_sha256, jsonable, read_init_image
from renderer.guidance.loop import to_pil

log = logging.getLogger(__name__)

NAME = "clip_diffusion"
STATE_FILE = "diffusion_state.pt"
TRAINED_STEPS = 1000
TINY_LABEL = "CLIP-guided diffusion with tiny random-initialised models (noise demo, no trained weights)"
_SIZES = {"guided-diffusion-256": 256, "guided-diffusion-512": 512}


_spec = cs.model_spec("a checkpoint name (guided-diffusion-256/512), a path to a .pt, or 'tiny'")


def _image_size(v: Any) -> int:
    if v not in (0, 256, 512) or isinstance(v, bool):
        raise ValueError("0 (from the checkpoint's name), 256 or 512")
    return v


@dataclass(frozen=True)
class Settings(GuidanceSettings):
    steps: int = 250
    cutouts: int = 16
    panorama: str = "none"
    checkpoint_every: int = 25
    progress_every: int = 5
    model: str = field(default="guided-diffusion-256", metadata={"check": _spec})
    image_size: int = field(default=0, metadata={"check": _image_size})
    sampler: str = field(default="ddpm", metadata={"choices": SAMPLERS})
    eta: float = field(default=0.0, metadata={"min": 0.0})
    clip_guidance_scale: float = field(default=1000.0, metadata={"min": 0.0})
    tv_scale: float = field(default=150.0, metadata={"min": 0.0})
    range_scale: float = field(default=50.0, metadata={"min": 0.0})
    skip_timesteps: int = 0

    @property
    def tiny(self) -> bool:
        return self.model == "tiny" or "tiny" in self.clip_models


def parse_settings(raw: Mapping[str, Any], strict: bool = True) -> Settings:
    return ClipDiffusionGenerator.parse(raw, strict)


def resolve_file(spec: str, image_size: int, weights_dir: Path) -> tuple[Path, int]:
    installed = cs.registry_files(spec, "diffusion", weights_dir, "guided-diffusion")
    if installed is not None:
        return installed[0], _SIZES[spec]
    path = Path(spec).expanduser()
    if not path.is_file():
        raise GeneratorUnavailable(f"setting 'model' = {spec!r}: not a known checkpoint (guided-diffusion-256, "
                                   "guided-diffusion-512, tiny) nor a .pt file")
    if image_size not in CONFIGS:
        raise GeneratorUnavailable(f"setting 'image_size' must be 256 or 512 for the checkpoint file {path} "
                                   "(a state dict does not say which model it holds)")
    return path, image_size


def estimate_bytes(unet: UNet, width: int, height: int, clip_bytes: int, act_bytes: int = 4) -> int:
    params = sum(p.numel() for p in unet.parameters())
    return int((4 * params + activation_bytes(unet.cfg, int(math.sqrt(width * height)), act_bytes) + clip_bytes)
               * 1.25 + 256 * 2**20)


class ClipDiffusionGenerator(GuidedGenerator):
    """A sampler, not an optimiser: settings, CLIP models and the prompt term come from the guidance host."""

    name = NAME
    settings_cls = Settings
    motion_settings = False  # its own loop: no story, zoom or interpolation
    tiny_label = TINY_LABEL
    title = "CLIP-guided diffusion"

    def __init__(self, settings: Settings, ctx: RenderContext):
        self._models: dict[tuple[str, int], tuple[UNet, dict]] = {}
        super().__init__(settings, ctx)

    @classmethod
    def parse(cls, raw: Mapping[str, Any], strict: bool = True) -> Settings:
        s = super().parse(raw, strict)
        if s.steps > TRAINED_STEPS:
            raise GeneratorUnavailable(f"generator {NAME!r}: setting 'steps' = {s.steps}; allowed: 1 to "
                                       f"{TRAINED_STEPS}")
        if s.skip_timesteps >= s.steps:
            raise GeneratorUnavailable(f"generator {NAME!r}: setting 'skip_timesteps' = {s.skip_timesteps}; "
                                       f"allowed: fewer than steps ({s.steps})")
        return s

    def _label(self, s: Settings) -> str:
        if s.tiny:
            return TINY_LABEL
        return f"CLIP-guided diffusion ({Path(s.model).stem} guided by {', '.join(s.clip_models)})"

    def _model(self, s: Settings) -> tuple[UNet, dict]:
        key = (s.model, s.image_size)
        if key not in self._models:
            if s.model == "tiny":
                unet, ident = random_unet(tiny_config()), cs.ModelIdent("tiny")
            else:
                path, size = resolve_file(s.model, s.image_size, self.weights_dir)
                unet = cs.checked_load(load_unet, path, CONFIGS[size])
                ident = cs.ModelIdent(s.model, path.name, file_sha256(path))
            self._models[key] = (unet.to(self.device), ident.as_dict())
        return self._models[key]

    def prepare(self, s: Settings) -> None:
        self._model(s)

    def canvas_size(self, s: Settings, width: int, height: int) -> tuple[int, int]:
        f = 2 ** (len(self._model(s)[0].cfg.channel_mult) - 1)
        return max(f, width // f * f), max(f, height // f * f)

    def render(self, req: RenderRequest, ctx: RenderContext) -> RenderResult:
        s = self._effective(req)
        device = torch.device(ctx.device)
        unet, ident = self._model(s)
        clips = [self._clip(spec) for spec in s.clip_models]
        prompts = [(t, float(w)) for t, w in req.prompts if float(w) != 0.0]
        if not prompts:
            raise ValueError(f"job {req.job_id}: generator {NAME!r} needs at least one prompt with a non-zero weight")
        width, height = self.canvas_size(s, req.width, req.height)
        act = 2 if (s.amp and ctx.dtype in (torch.bfloat16, torch.float16)) else 4
        clip_bytes = cs.clip_step_bytes([c for c, _ in clips], s.cutouts, act)
        cs.check_fits(lambda w, h: estimate_bytes(unet, w, h, clip_bytes, act), width, height,
                      2 ** (len(unet.cfg.channel_mult) - 1), cs.available_bytes(device), "CLIP-guided diffusion")
        seed = s.seed if s.seed is not None else req.seed
        gen = torch.Generator().manual_seed(seed)
        torch.manual_seed(seed)
        init_path = Path(s.init_image) if s.init_image else req.init_image
        init = read_init_image(init_path, width, height, device) * 2 - 1 if init_path else None
        diffusion = Diffusion(kept_timesteps(TRAINED_STEPS, s.steps, s.sampler), TRAINED_STEPS)
        n = len(diffusion)
        indices = list(range(n - s.skip_timesteps))[::-1]
        x = torch.randn(1, 3, height, width, generator=gen).to(device)
        if init is not None or s.skip_timesteps:
            start = init if init is not None else torch.zeros_like(x)
            x = diffusion.q_sample(start, indices[0], x)
        terms = self.clip_terms(s, [c for c, _ in clips], prompts, gen, device, init is not None)
        amp_dtype = ctx.dtype if (s.amp and ctx.dtype in (torch.bfloat16, torch.float16)) else None
        fp = self.fingerprint(s, prompts, seed, width, height, init_path)
        work = Path(ctx.work_dir)
        work.mkdir(parents=True, exist_ok=True)
        state_path = work / STATE_FILE
        done, resumed_from = 0, 0
        saved = cs.load_run_state(state_path, fp)
        if saved is not None:
            done, x = saved["done"], saved["x"].to(device)
            gen.set_state(saved["rng"])
            resumed_from = done
            log.info("resuming diffusion at step %d (%s)", done, state_path)
        total = len(indices)
        losses: dict[str, float] = {}
        pred = x
        while done < total:
            if ctx.should_stop():
                cs.save_run_state(state_path, fp, gen, done=done, x=x)
                raise RenderCancelled(f"stopped at step {done} of {total}; state saved to {state_path}")
            i = indices[done]
            xg = x.detach().requires_grad_(True)
            with torch.autocast(device_type=device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                raw = diffusion.p_mean_variance(unet, xg, i, clip_denoised=False)
                fac = math.sqrt(1 - diffusion.ac[i])
                x_in = raw.pred_xstart * fac + xg * (1 - fac)
                parts: dict[str, torch.Tensor] = {}
                for term in terms:
                    parts.update({k: v.float() for k, v in term(x_in.add(1).div(2).clamp(0, 1), done).items()})
            loss = sum(v for v in parts.values()) * s.clip_guidance_scale \
                + tv_loss(x_in.float()).sum() * s.tv_scale + range_loss(raw.pred_xstart.float()).sum() * s.range_scale
            grad = -torch.autograd.grad(loss, xg)[0]
            out = diffusion.clamped(raw, xg, i)
            noise = torch.randn(x.shape, generator=gen).to(device)
            with torch.no_grad():
                if s.sampler == "ddim":
                    x = diffusion.ddim_step(out, x, i, noise, grad, s.eta)
                else:
                    x = diffusion.ddpm_step(out, x, i, noise, grad)
            pred = out.pred_xstart
            done += 1
            losses = {k: float(v.detach()) for k, v in parts.items()}
            losses["guidance"] = float(loss.detach())
            if s.progress_every and (done % s.progress_every == 0 or done == total):
                ctx.progress({"step": done, "total": total, "loss": losses["guidance"], "losses": losses,
                              "image": to_pil((pred + 1) / 2)})
            if s.checkpoint_every and done % s.checkpoint_every == 0 and done < total:
                cs.save_run_state(state_path, fp, gen, done=done, x=x)
        meta = {
            "generator": NAME, "label": self._label(s), "seed": seed, "width": width, "height": height,
            "prompt": "|".join(f"{t}:{w:g}" for t, w in prompts), "prompts": [list(p) for p in prompts],
            "models": {"diffusion": ident, "clip": [i for _, i in clips]}, "params": jsonable(dataclasses.asdict(s)),
            "init_image": str(init_path) if init_path else None, "steps_done": total, "resumed_from": resumed_from,
            "losses": losses,
        }
        return RenderResult(image=to_pil((x.clamp(-1, 1) + 1) / 2), meta=meta)


@register(NAME)
def factory(settings: Mapping[str, Any], ctx: RenderContext) -> ClipDiffusionGenerator:
    return ClipDiffusionGenerator(parse_settings(settings), ctx)
