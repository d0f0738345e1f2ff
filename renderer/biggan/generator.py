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
``clip_models``, ``steps`` (300), ``lr`` (0.07), ``lr_schedule``, ``lr_min_frac``, ``cutouts`` (32),
``cut_pow``, ``augment``, ``checkpoint_every``, ``progress_every``, ``seed``, ``amp``: as for ``vqgan_clip``.

The picture is the model's resolution (128, 256 or 512 px square) whatever the canvas says.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping

import torch

from renderer import clip_steered as cs
from renderer.base import GeneratorUnavailable, RenderContext, RenderRequest, RenderResult, register
from renderer.biggan.model import OFFICIAL, BigGAN, activation_bytes, load_biggan, param_count, random_biggan, tiny_config
from renderer.vqgan_clip.generator import file_sha256
from renderer.vqgan_clip.optimise import to_pil

log = logging.getLogger(__name__)

NAME = "big_sleep"
TINY_LABEL = "Big Sleep with tiny random-initialised models (noise demo, no trained weights)"
DEFAULTS: dict[str, Any] = {**cs.COMMON_DEFAULTS, "biggan": "biggan-deep-256", "truncation": 1.0,
                            "class_sparsity": 50.0, "max_classes": None, "class_temperature": 2.0,
                            "latent_loss": 1.0}


def parse_settings(raw: Mapping[str, Any], strict: bool = True) -> dict[str, Any]:
    r = cs.SettingsReader(NAME, raw, DEFAULTS, strict)
    s = r.common()
    s.update(biggan=r.text("biggan", "a checkpoint name (biggan-deep-128/256/512), a path to a .bin, or 'tiny'"),
             truncation=r.number("truncation", maximum=1.0), class_sparsity=r.number("class_sparsity", strict_min=False),
             max_classes=r.optional_int("max_classes", 1), class_temperature=r.number("class_temperature"),
             latent_loss=r.number("latent_loss", strict_min=False))
    return s


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


class BigSleepGenerator(cs.SteeredGenerator):
    name = NAME
    title = "Big Sleep"
    model_key = "biggan"
    tiny_label = TINY_LABEL

    def load_model(self, spec: str) -> tuple[BigGAN, dict]:
        if spec == "tiny":
            model, ident = random_biggan(tiny_config()), cs.ModelIdent("tiny")
        else:
            bin_path, json_path = resolve_files(spec, self.weights_dir)
            model = load_biggan(bin_path, json_path)
            ident = cs.ModelIdent(spec, bin_path.name, file_sha256(bin_path))
        return model.to(self.device), ident.as_dict()

    def _check_memory(self, model: BigGAN, clips: list, s: Mapping[str, Any], ctx: RenderContext) -> None:
        free = cs.available_bytes(self.device)
        if free is None:
            return
        act = 2 if (s["amp"] and ctx.dtype in (torch.bfloat16, torch.float16)) else 4
        need = check_memory(model.cfg, sum(p.numel() for p in model.parameters()),
                            cs.clip_step_bytes(clips, s["cutouts"], act), free, s["cutouts"], act)
        log.info("Big Sleep memory estimate: %.2f GiB of %.2f GiB free", need / cs.GIB, free / cs.GIB)

    def render(self, req: RenderRequest, ctx: RenderContext) -> RenderResult:
        s = parse_settings(cs.merged_params(self.settings, req), strict=False)
        device = torch.device(ctx.device)
        model, ident = self.model(s["biggan"])
        clips = self.clips.many(s["clip_models"])
        prompts = cs.weighted_prompts(req, NAME)
        self._check_memory(model, [c for c, _ in clips], s, ctx)
        cfg = model.cfg
        seed = s["seed"] if s["seed"] is not None else req.seed
        gen = torch.Generator().manual_seed(seed)
        torch.manual_seed(seed)
        z0 = torch.randn(1, cfg.z_dim, generator=gen)
        logits0 = torch.randn(1, cfg.num_classes, generator=gen) * 0.3 - 3.9  # the notebook's start: all classes ~2%
        params = torch.cat([z0, logits0], 1).to(device).requires_grad_(True)
        zd = cfg.z_dim

        def classes_of(p: torch.Tensor) -> torch.Tensor:
            logits = p[:, zd:]
            if s["max_classes"]:
                return differentiable_topk(logits, s["max_classes"], s["class_temperature"])
            return torch.sigmoid(logits)

        def generate(p: torch.Tensor) -> torch.Tensor:
            return (model(p[:, :zd], classes_of(p), s["truncation"]) + 1) / 2

        def notebook_terms(image: torch.Tensor, step: int) -> dict[str, torch.Tensor]:
            out: dict[str, torch.Tensor] = {}
            if s["latent_loss"]:
                out["latent"] = s["latent_loss"] * latent_statistics_loss(params[:, :zd].float())
            if s["class_sparsity"]:
                out["class_sparsity"] = class_sparsity_loss(classes_of(params).float(), s["class_sparsity"])
            return out

        term = cs.clip_term([c for c, _ in clips], prompts, device, gen, s)
        fp = cs.fingerprint(generator=NAME, s=s, prompts=prompts, seed=seed)
        res = cs.run_loop(params, generate, [term, notebook_terms], s, ctx, [gen], fp)
        with torch.no_grad():
            top = classes_of(params.detach()).float()[0].topk(3)
        meta = {
            "generator": NAME, "label": self.label_for(s), "seed": seed, "width": cfg.output_dim,
            "height": cfg.output_dim, "prompt": "|".join(f"{t}:{w:g}" for t, w in prompts),
            "prompts": [list(p) for p in prompts], "models": {"biggan": ident, "clip": [i for _, i in clips]},
            "params": {k: list(v) if isinstance(v, tuple) else v for k, v in s.items()},
            "top_classes": [[int(i), round(float(v), 4)] for v, i in zip(top.values, top.indices)],
            "steps_done": res.steps_done, "resumed_from": res.resumed_from, "losses": res.losses,
            "seconds": round(res.seconds, 2),
        }
        return RenderResult(image=to_pil(res.image), meta=meta)


@register(NAME)
def factory(settings: Mapping[str, Any], ctx: RenderContext) -> BigSleepGenerator:
    return BigSleepGenerator(parse_settings(settings), ctx)
