"""What the CLIP-steered generators built on other trained models share: settings, CLIP, the loop, memory.

Big Sleep (BigGAN), dVAE+CLIP and CLIP-steered DeepDream all reduce to the same
thing: some parameters, a differentiable ``generate(params) -> image in [0, 1]``,
the CLIP prompt loss over batched cutouts plus generator-specific terms, run by
the one optimisation loop (:mod:`renderer.vqgan_clip.optimise`) with its
checkpoints, resume, progress frames and timelapse.  This module holds that
shared part so each generator only says how its model turns parameters into a
picture; prompts, cutouts and CLIP guidance come from :mod:`renderer.vqgan_clip`
and are never copied.

It also holds the generic half of the memory models: given a function that
estimates the bytes of one step at ``width`` x ``height``, find the largest
canvas with the same aspect ratio that fits, and refuse a request that does not
with that size in the message.
"""
from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch

from renderer.base import GeneratorUnavailable, RenderContext, RenderRequest
from renderer.checkpoint_io import CheckpointError
from renderer.vqgan_clip import memory
from renderer.vqgan_clip.clip_guidance import ClipModel, clip_checkpoint_name, clip_weights_path, load_clip
from renderer.vqgan_clip.cutouts import AugmentConfig
from renderer.vqgan_clip.generator import file_sha256
from renderer.vqgan_clip.losses import ClipTerm
from renderer.vqgan_clip.optimise import LR_SCHEDULES, Hooks, LossTerm, OptimConfig, OptimResult, Problem, optimise

log = logging.getLogger(__name__)

GIB = memory.GIB
CanvasTooLarge = memory.CanvasTooLarge

# Settings every CLIP-steered optimising generator accepts, with their defaults.
COMMON_DEFAULTS: dict[str, Any] = {
    "clip_models": ("ViT-B-32:openai",), "steps": 300, "lr": 0.07, "lr_schedule": "constant", "lr_min_frac": 0.1,
    "cutouts": 32, "cut_pow": 1.0, "augment": True, "checkpoint_every": 50, "progress_every": 10, "seed": None,
    "amp": True,
}


def bad_setting(generator: str, key: str, value: Any, allowed: str) -> GeneratorUnavailable:
    return GeneratorUnavailable(f"generator {generator!r}: setting {key!r} = {value!r}; allowed: {allowed}")


class SettingsReader:
    """Validates one generator's ``[generator]`` table; every error names the generator, key and what is allowed."""

    def __init__(self, generator: str, raw: Mapping[str, Any], defaults: Mapping[str, Any], strict: bool = True):
        self.generator = generator
        self.raw = dict(raw)
        self.defaults = dict(defaults)
        unknown = sorted(set(self.raw) - set(self.defaults))
        if unknown:
            msg = (f"generator {generator!r}: unknown setting(s) {', '.join(unknown)}; "
                   f"allowed: {', '.join(sorted(self.defaults))}")
            if strict:
                raise GeneratorUnavailable(msg)
            log.warning("%s (ignored)", msg)

    def _bad(self, key: str, value: Any, allowed: str) -> GeneratorUnavailable:
        return bad_setting(self.generator, key, value, allowed)

    def get(self, key: str) -> Any:
        return self.raw.get(key, self.defaults[key])

    def integer(self, key: str, minimum: int = 0) -> int:
        v = self.get(key)
        if not isinstance(v, int) or isinstance(v, bool) or v < minimum:
            raise self._bad(key, v, f"an integer >= {minimum}")
        return v

    def number(self, key: str, minimum: float = 0.0, strict_min: bool = True, maximum: float | None = None) -> float:
        v = self.get(key)
        ok = isinstance(v, (int, float)) and not isinstance(v, bool) and (v > minimum if strict_min else v >= minimum)
        if not ok or (maximum is not None and v > maximum):
            rng = f"{'>' if strict_min else '>='} {minimum}" + (f" and <= {maximum}" if maximum is not None else "")
            raise self._bad(key, v, f"a number {rng}")
        return float(v)

    def boolean(self, key: str) -> bool:
        v = self.get(key)
        if not isinstance(v, bool):
            raise self._bad(key, v, "true or false")
        return v

    def choice(self, key: str, allowed: Sequence[Any]) -> Any:
        v = self.get(key)
        if v not in allowed:
            raise self._bad(key, v, ", ".join(map(str, allowed)))
        return v

    def text(self, key: str, allowed: str) -> str:
        v = self.get(key)
        if not isinstance(v, str) or not v:
            raise self._bad(key, v, allowed)
        return v

    def schedule(self, key: str) -> float | tuple[float, float]:
        """A positive number, or ``[start, end]`` moved linearly over the run."""
        v = self.get(key)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0:
            return float(v)
        if isinstance(v, (list, tuple)) and len(v) == 2 and all(
                isinstance(x, (int, float)) and not isinstance(x, bool) and x > 0 for x in v):
            return (float(v[0]), float(v[1]))
        raise self._bad(key, v, "a positive number or [start, end]")

    def optional_int(self, key: str, minimum: int = 0) -> int | None:
        return None if self.get(key) is None else self.integer(key, minimum)

    def common(self) -> dict[str, Any]:
        """The shared settings, checked."""
        cm = self.get("clip_models")
        cm = [cm] if isinstance(cm, str) else cm
        if not isinstance(cm, (list, tuple)) or not cm or not all(isinstance(x, str) and x for x in cm):
            raise self._bad("clip_models", cm, "a non-empty list of open_clip names like 'ViT-B-32:openai', or ['tiny']")
        return {
            "clip_models": tuple(cm), "steps": self.integer("steps", 1), "lr": self.number("lr"),
            "lr_schedule": self.choice("lr_schedule", LR_SCHEDULES), "lr_min_frac": self.number("lr_min_frac"),
            "cutouts": self.integer("cutouts", 1), "cut_pow": self.schedule("cut_pow"),
            "augment": self.boolean("augment"), "checkpoint_every": self.integer("checkpoint_every"),
            "progress_every": self.integer("progress_every"), "seed": self.optional_int("seed"),
            "amp": self.boolean("amp"),
        }


def merged_params(settings: Mapping[str, Any], req: RenderRequest) -> dict[str, Any]:
    merged = dict(settings)
    merged.update(dict(req.params or {}))
    return merged


def weighted_prompts(req: RenderRequest, generator: str, required: bool = True) -> list[tuple[str, float]]:
    prompts = [(t, float(w)) for t, w in req.prompts if float(w) != 0.0]
    if required and not prompts:
        raise ValueError(f"job {req.job_id}: generator {generator!r} needs at least one prompt with a non-zero weight")
    return prompts


class ClipModels:
    """CLIP models by spec, loaded once per generator, with a clear error naming the fetch command."""

    def __init__(self, device: torch.device, weights_dir: Path):
        self.device = device
        self.weights_dir = Path(weights_dir)
        self._clips: dict[str, tuple[ClipModel, dict]] = {}

    def get(self, spec: str) -> tuple[ClipModel, dict]:
        if spec not in self._clips:
            if spec != "tiny" and clip_weights_path(spec, self.weights_dir) is None:
                raise GeneratorUnavailable(f"CLIP weights for {spec!r} are not in {self.weights_dir}; "
                                           f"run: python -m kiosk fetch-models {clip_checkpoint_name(spec)}")
            try:
                clip = load_clip(spec, self.weights_dir, self.device)
            except (ValueError, FileNotFoundError) as exc:
                raise GeneratorUnavailable(f"setting 'clip_models': {exc}") from exc
            ident = {"name": spec, "weights": "random-init"} if spec == "tiny" else {
                "name": spec, "file": Path(clip.weights).name, "sha256": file_sha256(Path(clip.weights))}
            self._clips[spec] = (clip, ident)
        return self._clips[spec]

    def many(self, specs: Sequence[str]) -> list[tuple[ClipModel, dict]]:
        return [self.get(s) for s in specs]


def registry_files(spec: str, family: str, weights_dir: Path, what: str,
                   required: int = 1) -> list[Path | None] | None:
    """The installed files of registry checkpoint ``spec`` of ``family`` (main first, then extras; None for an
    optional extra that is absent), or None when ``spec`` is not such a name.  When one of the first
    ``required`` files is missing: :class:`GeneratorUnavailable` with the fetch command."""
    from renderer.weights import WeightsError, get_checkpoint

    try:
        entry = get_checkpoint(spec)
    except WeightsError:
        return None
    if entry.family != family:
        return None
    paths = [Path(weights_dir) / f.filename for f in entry.files]
    missing = [p.name for p in paths[:required] if not p.is_file()]
    if missing:
        raise GeneratorUnavailable(f"{what} weights {spec!r} are not in {weights_dir} (need {' and '.join(missing)}); "
                                   f"run: python -m kiosk fetch-models {spec}")
    return [p if p.is_file() else None for p in paths]


def clip_term(clips: Sequence[ClipModel], prompts: Sequence[tuple[str, float]], device: torch.device,
              gen: torch.Generator, s: Mapping[str, Any]) -> ClipTerm:
    """The shared CLIP prompt loss (every prompt everywhere: these generators make single pictures)."""
    weights = torch.tensor([w for _, w in prompts], dtype=torch.float32)
    targets = [c.encode_text([t for t, _ in prompts], device) for c in clips]
    return ClipTerm(clips=list(clips), targets=targets, prompt_weights=weights, generator=gen,
                    cutouts=s["cutouts"], cut_pow=s["cut_pow"], panorama="none", semantic=0.0,
                    augment=AugmentConfig() if s["augment"] else None, total_steps=s["steps"])


def fingerprint(**parts: Any) -> str:
    blob = json.dumps(parts, sort_keys=True, default=lambda o: list(o) if isinstance(o, tuple) else str(o))
    return hashlib.sha256(blob.encode()).hexdigest()


def run_loop(params: torch.Tensor, generate: Callable[[torch.Tensor], torch.Tensor], terms: Sequence[LossTerm],
             s: Mapping[str, Any], ctx: RenderContext, gens: Sequence[torch.Generator], fp: str,
             constrain: Callable[[torch.Tensor], None] | None = None) -> OptimResult:
    """Run the one optimisation loop with the shared settings (checkpoints, resume, progress, AMP)."""
    amp_dtype = ctx.dtype if (s["amp"] and ctx.dtype in (torch.bfloat16, torch.float16)) else None
    cfg = OptimConfig(steps=s["steps"], lr=s["lr"], lr_schedule=s["lr_schedule"], lr_min_frac=s["lr_min_frac"],
                      checkpoint_every=s["checkpoint_every"], progress_every=s["progress_every"],
                      fingerprint=fp, amp_dtype=amp_dtype)
    problem = Problem(params=params, generate=generate, terms=list(terms), constrain=constrain, generators=list(gens))
    return optimise(problem, cfg, Hooks(work_dir=Path(ctx.work_dir), progress=ctx.progress,
                                        should_stop=ctx.should_stop))


# --------------------------------------------------------------------------- memory


def clip_step_bytes(clips: Sequence[ClipModel], cutouts: int, act_bytes: int = 4) -> int:
    """CLIP's share of one step (weights + activations saved for backward over the cutouts)."""
    shapes = [memory.ClipShape.of(c.model) for c in clips]
    elems = 0.0
    for c in shapes:
        per_layer = 20 * c.tokens * c.width + 2 * c.heads * c.tokens ** 2
        elems += cutouts * (c.layers * per_layer + 3 * c.image_size ** 2 * 4)
    return int(4 * sum(c.params for c in shapes) + elems * act_bytes)


def largest_fitting(estimate: Callable[[int, int], int], width: int, height: int, factor: int,
                    available: int) -> tuple[int, int] | None:
    """The largest (w, h) with the aspect ratio of ``width`` x ``height`` (multiples of ``factor``) that fits."""
    best = None
    lo, hi = 1, max(width, height) // factor
    while lo <= hi:
        mid = (lo + hi) // 2
        scale = mid * factor / max(width, height)
        w = max(factor, int(width * scale) // factor * factor)
        h = max(factor, int(height * scale) // factor * factor)
        if estimate(w, h) <= available:
            best, lo = (w, h), mid + 1
        else:
            hi = mid - 1
    return best


def check_fits(estimate: Callable[[int, int], int], width: int, height: int, factor: int, available: int | None,
               what: str) -> int:
    """Raise :class:`CanvasTooLarge` naming the largest size that fits; returns the estimate in bytes."""
    need = estimate(width, height)
    if available is None or need <= available:
        return need
    best = largest_fitting(estimate, width, height, factor, available)
    hint = (f"the largest size that fits is {best[0]}x{best[1]}" if best
            else "not even the smallest canvas fits; use fewer cutouts or CLIP models")
    raise CanvasTooLarge(f"{what} at {width}x{height} needs about {need / GIB:.2f} GiB, but only "
                         f"{available / GIB:.2f} GiB is free on the device; {hint} (or lower 'cutouts')")


def available_bytes(device: torch.device) -> int | None:
    return memory.available_bytes(torch.device(device))


def load_init_image(path: Path, width: int, height: int) -> torch.Tensor:
    """An init image as (1, 3, H, W) in [0, 1]; a clear error naming the file when it cannot be read."""
    import numpy as np
    from PIL import Image

    try:
        with Image.open(path) as im:
            pil = im.convert("RGB").resize((width, height), Image.LANCZOS)
    except OSError as exc:
        raise ValueError(f"init image {path}: cannot read it: {exc}") from exc
    return torch.from_numpy(np.asarray(pil).copy()).permute(2, 0, 1)[None].float() / 255


@dataclass
class ModelIdent:
    """How a piece names the model it came from (checkpoint name, file, sha256, or random-init)."""

    name: str
    file: str = ""
    sha256: str = ""

    def as_dict(self) -> dict[str, str]:
        if not self.file:
            return {"name": self.name, "weights": "random-init"}
        return {"name": self.name, "file": self.file, "sha256": self.sha256}


class SteeredGenerator:
    """The frame the family's generators share: settings, device, CLIP models, and their own models by spec.

    Subclasses set ``name``, ``title``, ``model_key`` (the setting that names the model) and
    ``tiny_label``, and implement :meth:`load_model` (a :class:`CheckpointError` there becomes
    :class:`GeneratorUnavailable` naming the file, so the worker marks the exhibit unavailable).
    """

    name = ""
    title = ""
    model_key = ""
    tiny_label = ""

    def __init__(self, settings: dict[str, Any], ctx: RenderContext):
        self.settings = settings
        self.device = torch.device(ctx.device)
        self.weights_dir = Path(ctx.weights_dir)
        self.clips = ClipModels(self.device, self.weights_dir)
        self._models: dict[str, tuple] = {}
        self.model(settings[self.model_key])  # fail early and clearly when weights are missing
        if self.uses_clip(settings):
            self.clips.many(settings["clip_models"])

    def uses_clip(self, s: Mapping[str, Any]) -> bool:
        return True

    @property
    def label(self) -> str:
        return self.label_for(self.settings)

    def label_for(self, s: Mapping[str, Any]) -> str:
        if s[self.model_key] == "tiny" or (self.uses_clip(s) and "tiny" in s["clip_models"]):
            return self.tiny_label
        return f"{self.title} ({Path(s[self.model_key]).stem} guided by {', '.join(s['clip_models'])})"

    def model(self, spec: str) -> tuple:
        if spec not in self._models:
            try:
                self._models[spec] = self.load_model(spec)
            except CheckpointError as exc:
                raise GeneratorUnavailable(str(exc)) from exc
        return self._models[spec]

    def load_model(self, spec: str) -> tuple:
        raise NotImplementedError
