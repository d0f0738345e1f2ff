"""The ``big_sleep`` generator: BigGAN-deep steered by CLIP, as The Big Sleep notebook did it.

The optimised parameters are BigGAN's noise vector ``z`` and a vector of 1000
class logits.  The class vector fed to BigGAN is ``sigmoid(logits)`` (or, with
``max_classes``, a differentiable top-k softmax that mixes at most that many
classes); the notebook's tricks keep it near one-hot and the noise near a
standard normal:

* class sparsity: ``(class_sparsity * the 999 smallest class weights)^2`` averaged
  (the notebook's ``50 * topk(..., largest=False, k=999)``);
* latent statistics: ``|1 - std(z)| + |mean(z)| + 4 * max(mean(z^2), 1)`` plus the
  absolute skew and excess kurtosis of ``z``.

Settings (the exhibit's ``[generator]`` table; a job's ``params`` override them):

``biggan`` (``"biggan-deep-256"``): ``biggan-deep-128`` / ``-256`` / ``-512`` from ``fetch-models``, a path to a
    ``.bin`` with its ``.json`` beside it, or ``"tiny"`` (a tiny random-initialised BigGAN, noise).
``truncation`` (1.0, in (0, 1]); ``class_sparsity`` (50.0; 0 = off); ``max_classes`` (none, or an integer);
``class_temperature`` (2.0, for ``max_classes``); ``latent_loss`` (1.0; 0 = off);
and every setting of the shared guidance host (:mod:`renderer.guidance.host`): ``clip_models``, ``steps``
(300), ``lr`` (0.07), ``lr_schedule``, ``cutouts`` (32), ``cut_pow``, ``augment``, ``panorama`` (default
``"none"`` here: every prompt everywhere, as the notebook), ``symmetry``, ``timelapse``, ``checkpoint_every``,
``progress_every``, ``seed``, ``amp``.

The picture is the model's resolution (128, 256 or 512 px square) whatever the canvas says; there
is no init image (BigGAN has no encoder).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from renderer import clip_steered as cs
from renderer.base import GeneratorUnavailable, RenderContext, RenderRequest, RenderResult, register
from renderer.biggan.model import OFFICIAL, BigGAN, activation_bytes, load_biggan, param_count, random_biggan, tiny_config
from renderer.guidance.host import Canvas, GuidanceSettings, GuidedGenerator, file_sha256
from renderer.vqgan_clip.clip_guidance import ClipModel

log = logging.getLogger(__name__)

NAME = "big_sleep"
TINY_LABEL = "Big Sleep with tiny random-initialised models (noise demo, no trained weights)"


_spec = cs.model_spec("a checkpoint name (biggan-deep-128/256/512), a path to a .bin, or 'tiny'")


def _optional_count(v: Any) -> int | None:
    if v is None:
        return None
    if not isinstance(v, int) or isinstance(v, bool) or v < 1:
        raise ValueError("nothing (every class), or an integer >= 1")
    return v


@dataclass(frozen=True)
class Settings(GuidanceSettings):
    lr: float = 0.07
    panorama: str = "none"  # the notebook: every prompt everywhere
    biggan: str = field(default="biggan-deep-256", metadata={"check": _spec})
    truncation: float = field(default=1.0, metadata={"max": 1.0})
    class_sparsity: float = field(default=50.0, metadata={"min": 0.0})
    max_classes: Any = field(default=None, metadata={"check": _optional_count})
    class_temperature: float = 2.0
    latent_loss: float = field(default=1.0, metadata={"min": 0.0})

    @property
    def tiny(self) -> bool:
        return self.biggan == "tiny" or "tiny" in self.clip_models


def parse_settings(raw: Mapping[str, Any], strict: bool = True) -> Settings:
    return BigSleepGenerator.parse(raw, strict)


def resolve_files(spec: str, weights_dir: Path) -> tuple[Path, Path]:
    """(state dict, config.json) for a registry name or a path; the fetch command when missing."""
    installed = cs.registry_files(spec, "biggan", weights_dir, "BigGAN", required=2)
    if installed is not None:
        return installed[0], installed[1]
    path = Path(spec).expanduser()
    if not path.is_file() or not path.with_suffix(".json").is_file():
        raise GeneratorUnavailable(f"setting 'biggan' = {spec!r}: not a known checkpoint (biggan-deep-128, "
                                   f"biggan-deep-256, biggan-deep-512, tiny) nor a .bin with its .json beside it")
    return path, path.with_suffix(".json")


def differentiable_topk(x: torch.Tensor, k: int, temperature: float) -> torch.Tensor:
    """Sum of the ``k`` successive softmax maxima (each class taken once): a soft mix of at most ``k`` classes."""
    out = torch.zeros_like(x)
    for i in range(k):
        values, idx = (x / temperature).softmax(dim=-1).topk(1, dim=-1)
        out = out + torch.zeros_like(x).scatter(-1, idx, values)
        if i < k - 1:
            x = x.scatter(-1, idx, float("-inf"))
    return out


def latent_statistics_loss(z: torch.Tensor, thresh: float = 1.0) -> torch.Tensor:
    """The notebook's pull of ``z`` (N, D) toward a standard normal: std, mean, energy, skew, kurtosis."""
    loss = (1 - z.std(dim=1)).abs().mean() + z.mean(dim=1).abs().mean() \
        + 4 * torch.clamp(z.pow(2).mean(), min=thresh)
    for row in z:
        diffs = row - row.mean()
        std = diffs.pow(2).mean().sqrt()
        zs = diffs / std
        loss = loss + (zs.pow(4).mean() - 3).abs() / z.shape[0] + zs.pow(3).mean().abs() / z.shape[0]
    return loss


def class_sparsity_loss(classes: torch.Tensor, weight: float) -> torch.Tensor:
    """``mean((weight * the n-1 smallest class weights)^2)``: everything but the top class pushed to zero."""
    k = classes.shape[1] - 1
    return (weight * torch.topk(classes, k=k, dim=1, largest=False)[0]).pow(2).mean()


def estimate_bytes(cfg, n_params: int, clip_bytes: int, act_bytes: int = 4) -> int:
    return int((4 * n_params + activation_bytes(cfg, act_bytes=act_bytes) + clip_bytes) * 1.25 + 256 * 2**20)


def check_memory(cfg, n_params: int, clip_bytes: int, available: int, cutouts: int, act_bytes: int = 4) -> int:
    """Bytes one step needs; :class:`CanvasTooLarge` naming the largest official BigGAN size that fits if too many."""
    need = estimate_bytes(cfg, n_params, clip_bytes, act_bytes)
    if need <= available:
        return need
    fitting = [size for size, c in sorted(OFFICIAL.items())
               if size < cfg.output_dim and estimate_bytes(c, param_count(c), clip_bytes, act_bytes) <= available]
    hint = (f"the largest size that fits is {fitting[-1]}x{fitting[-1]} (biggan-deep-{fitting[-1]})" if fitting
            else "not even biggan-deep-128 fits; use fewer cutouts or CLIP models")
    raise cs.CanvasTooLarge(f"Big Sleep at {cfg.output_dim}x{cfg.output_dim} with {cutouts} cutouts needs about "
                            f"{need / cs.GIB:.2f} GiB, but only {available / cs.GIB:.2f} GiB is free on the device; "
                            f"{hint} (or lower 'cutouts')")


class BigSleepGenerator(GuidedGenerator):
    """BigGAN's noise and class vector as the canvas of the shared guidance host, plus the notebook's terms."""

    name = NAME
    settings_cls = Settings
    tiny_label = TINY_LABEL
    title = "Big Sleep"

    def __init__(self, settings: Settings, ctx: RenderContext):
        self._models: dict[str, tuple[BigGAN, dict]] = {}
        self._current: tuple[torch.Tensor, torch.Tensor, Settings] | None = None
        super().__init__(settings, ctx)

    def _label(self, s: Settings) -> str:
        if s.tiny:
            return TINY_LABEL
        return f"Big Sleep ({Path(s.biggan).stem} guided by {', '.join(s.clip_models)})"

    def _model(self, spec: str) -> tuple[BigGAN, dict]:
        if spec not in self._models:
            if spec == "tiny":
                model, ident = random_biggan(tiny_config()), cs.ModelIdent("tiny")
            else:
                bin_path, json_path = resolve_files(spec, self.weights_dir)
                model = cs.checked_load(load_biggan, bin_path, json_path)
                ident = cs.ModelIdent(spec, bin_path.name, file_sha256(bin_path))
            self._models[spec] = (model.to(self.device), ident.as_dict())
        return self._models[spec]

    def prepare(self, s: Settings) -> None:
        self._model(s.biggan)

    def model_ids(self, s: Settings) -> dict[str, Any]:
        return {"biggan": self._model(s.biggan)[1]}

    def canvas_size(self, s: Settings, width: int, height: int) -> tuple[int, int]:
        size = self._model(s.biggan)[0].cfg.output_dim  # the picture is the model's resolution
        return size, size

    def check_memory(self, s: Settings, clips: Sequence[ClipModel], width: int, height: int,
                     ctx: RenderContext) -> None:
        free = cs.available_bytes(self.device)
        if free is None:
            return
        model = self._model(s.biggan)[0]
        act = 2 if (s.amp and ctx.dtype in (torch.bfloat16, torch.float16)) else 4
        need = check_memory(model.cfg, sum(p.numel() for p in model.parameters()),
                            cs.clip_step_bytes(clips, s.cutouts, act), free, s.cutouts, act)
        log.info("Big Sleep memory estimate: %.2f GiB of %.2f GiB free", need / cs.GIB, free / cs.GIB)

    @staticmethod
    def classes_of(logits: torch.Tensor, s: Settings) -> torch.Tensor:
        if s.max_classes:
            return differentiable_topk(logits, s.max_classes, s.class_temperature)
        return torch.sigmoid(logits)

    def make_canvas(self, s: Settings, width: int, height: int, gen: torch.Generator, device: torch.device,
                    init: torch.Tensor | None, init_path: Path | None) -> Canvas:
        if init is not None:
            raise GeneratorUnavailable("big_sleep has no encoder: it cannot start from an init image")
        model = self._model(s.biggan)[0]
        cfg = model.cfg
        z = torch.randn(1, cfg.z_dim, generator=gen).to(device).requires_grad_(True)
        # the notebook's start: every class at about 2%
        logits = (torch.randn(1, cfg.num_classes, generator=gen) * 0.3 - 3.9).to(device).requires_grad_(True)
        self._current = (z, logits, s)

        def image(params: Sequence[torch.Tensor]) -> torch.Tensor:
            zz, ll = params
            return (model(zz, self.classes_of(ll, s), s.truncation) + 1) / 2

        return Canvas(params=[z, logits], image=image)

    def clip_terms(self, s: Settings, clips: Sequence[ClipModel], prompts: Sequence[tuple[str, float]],
                   gen: torch.Generator, device: torch.device, has_init: bool) -> list:
        terms = super().clip_terms(s, clips, prompts, gen, device, has_init)
        z, logits, _ = self._current

        def notebook_terms(image: torch.Tensor, step: int) -> dict[str, torch.Tensor]:
            out: dict[str, torch.Tensor] = {}
            if s.latent_loss:
                out["latent"] = s.latent_loss * latent_statistics_loss(z.float())
            if s.class_sparsity:
                out["class_sparsity"] = class_sparsity_loss(self.classes_of(logits, s).float(), s.class_sparsity)
            return out

        return [*terms, notebook_terms]

    def render(self, req: RenderRequest, ctx: RenderContext) -> RenderResult:
        res = super().render(req, ctx)
        _, logits, s = self._current
        with torch.no_grad():
            top = self.classes_of(logits.detach(), s).float()[0].topk(3)
        res.meta["top_classes"] = [[int(i), round(float(v), 4)] for v, i in zip(top.values, top.indices)]
        return res


@register(NAME)
def factory(settings: Mapping[str, Any], ctx: RenderContext) -> BigSleepGenerator:
    return BigSleepGenerator(parse_settings(settings), ctx)
