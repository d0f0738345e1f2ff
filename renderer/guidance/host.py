"""What every CLIP-steered generator shares: settings, CLIP models, loss terms, and the render around the loop.

A generator of the family is a :class:`GuidedGenerator` subclass that says how
an image is parametrised: :meth:`GuidedGenerator.make_canvas` returns a
:class:`Canvas` (the leaf tensors to optimise and a differentiable ``image``).
Everything else applies to every member unchanged: ``text:weight`` prompts,
several CLIP models at once, batched cutouts with augmentations, panorama
weights, tone / edge / semantic symmetry, init images, the learning-rate
schedule, checkpoints with bit-identical resume, live progress frames, the
timelapse, bfloat16/float16 autocast, and a story (prompts changing over the run).

Settings are a frozen dataclass per generator, subclassing
:class:`GuidanceSettings`; :func:`parse_settings` validates the exhibit's
``[generator]`` table against it, naming the generator, the key and what is
allowed.  A generator's own keys are validated from their defaults' types
(bool, int >= 0, float > 0) plus ``field(metadata=...)``: ``choices``, ``min``,
``max``, or ``check`` (a function returning the cleaned value or raising
ValueError with what is allowed).
"""
from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch

from exhibits.files import sha256_file
from renderer.base import GeneratorUnavailable, RenderContext, RenderRequest, RenderResult
from renderer.guidance import motion
from renderer.guidance.loop import LR_SCHEDULES, TIMELAPSE_FORMATS, Hooks, OptimConfig, Problem, optimise, to_pil
from renderer.vqgan_clip.clip_guidance import ClipModel, clip_checkpoint_name, clip_weights_path, load_clip
from renderer.vqgan_clip.cutouts import AugmentConfig
from renderer.vqgan_clip.losses import PANORAMA_MODES, ClipTerm, SymmetryTerm

log = logging.getLogger(__name__)

SYMMETRY_KEYS = ("edge", "tone", "semantic")


@dataclass(frozen=True)
class GuidanceSettings:
    """The settings every CLIP-steered generator understands (see the Doorways generator for each one)."""

    clip_models: tuple[str, ...] = ("ViT-B-32:openai",)
    steps: int = 300
    lr: float = 0.1
    lr_schedule: str = "constant"
    lr_min_frac: float = 0.1
    cutouts: int = 32
    cut_pow: Any = 1.0
    init_cut_pow: Any = 2.0
    augment: bool = True
    panorama: str = "linear"
    symmetry: Mapping[str, float] = field(default_factory=lambda: {"edge": 0.0, "tone": 0.0, "semantic": 0.0})
    checkpoint_every: int = 50
    progress_every: int = 10
    timelapse: int = 0
    timelapse_format: str = "mp4"
    seed: int | None = None
    amp: bool = True
    init_image: str | None = None
    story: Any = None  # see renderer.guidance.motion
    zoom: Any = None
    interpolate: int = 0  # frames of a latent interpolation from the start to the finished piece (0 = none)

    @property
    def tiny(self) -> bool:
        return "tiny" in self.clip_models


COMMON_KEYS = tuple(f.name for f in fields(GuidanceSettings))
MOTION_KEYS = ("story", "zoom", "interpolate")


def _bad(name: str, key: str, value: Any, allowed: str) -> GeneratorUnavailable:
    return GeneratorUnavailable(f"generator {name!r}: setting {key!r} = {value!r}; allowed: {allowed}")


def _pow_value(name: str, key: str, v: Any) -> Any:
    if isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0:
        return float(v)
    if isinstance(v, (list, tuple)) and len(v) == 2 and all(isinstance(x, (int, float)) and x > 0 for x in v):
        return (float(v[0]), float(v[1]))
    raise _bad(name, key, v, "a positive number or [start, end]")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _check_common(name: str, d: dict[str, Any]) -> None:
    if "clip_models" in d:
        cm = d["clip_models"]
        if isinstance(cm, str):
            cm = [cm]
        if not cm or not all(isinstance(x, str) and x for x in cm):
            raise _bad(name, "clip_models", cm, "a non-empty list of open_clip names like 'ViT-B-32:openai', or ['tiny']")
        d["clip_models"] = tuple(cm)
    for key in ("steps", "cutouts", "checkpoint_every", "progress_every", "timelapse", "interpolate"):
        if key in d and (not _is_int(d[key]) or d[key] < 0 or (key in ("steps", "cutouts") and d[key] < 1)):
            raise _bad(name, key, d[key], "a non-negative integer" if key not in ("steps", "cutouts") else "an integer >= 1")
    for key in ("lr", "lr_min_frac"):
        if key in d and (not _is_number(d[key]) or d[key] <= 0):
            raise _bad(name, key, d[key], "a positive number")
    for key in ("cut_pow", "init_cut_pow"):
        if key in d:
            d[key] = _pow_value(name, key, d[key])
    choices = {"lr_schedule": LR_SCHEDULES, "panorama": PANORAMA_MODES, "timelapse_format": TIMELAPSE_FORMATS}
    for key, allowed in choices.items():
        if key in d and d[key] not in allowed:
            raise _bad(name, key, d[key], ", ".join(allowed))
    if "symmetry" in d:
        sym = d["symmetry"]
        if not isinstance(sym, Mapping) or set(sym) - set(SYMMETRY_KEYS):
            raise _bad(name, "symmetry", sym, "a table with keys edge, tone, semantic")
        if not all(isinstance(v, (int, float)) and v >= 0 for v in sym.values()):
            raise _bad(name, "symmetry", sym, "non-negative weights")
        d["symmetry"] = {k: float(sym.get(k, 0.0)) for k in SYMMETRY_KEYS}
    for key in ("augment", "amp"):
        if key in d and not isinstance(d[key], bool):
            raise _bad(name, key, d[key], "true or false")
    if "seed" in d and d["seed"] is not None and not _is_int(d["seed"]):
        raise _bad(name, "seed", d["seed"], "an integer")
    for key, parse in (("story", motion.parse_story), ("zoom", motion.parse_zoom)):
        if d.get(key) is not None:
            try:
                parse(d[key])
            except ValueError as exc:
                raise _bad(name, key, d[key], str(exc)) from None


def _check_own(name: str, f: Any, d: dict[str, Any]) -> None:
    """A generator's own key, validated from its default's type and its metadata."""
    key, v, meta = f.name, d[f.name], f.metadata
    if "check" in meta:
        try:
            d[key] = meta["check"](v)
        except (ValueError, TypeError) as exc:
            raise _bad(name, key, v, str(exc)) from None
        return
    if "choices" in meta:
        if v not in meta["choices"]:
            raise _bad(name, key, v, ", ".join(map(str, meta["choices"])))
        return
    default = f.default if f.default is not MISSING else None
    lo, hi = meta.get("min"), meta.get("max")
    rng = f" from {lo} to {hi}" if lo is not None and hi is not None else (f" >= {lo}" if lo is not None else "")
    if isinstance(default, bool):
        if not isinstance(v, bool):
            raise _bad(name, key, v, "true or false")
    elif isinstance(default, int):
        lo = 0 if lo is None else lo
        if not _is_int(v) or v < lo or (hi is not None and v > hi):
            raise _bad(name, key, v, f"an integer{rng or ' >= 0'}")
    elif isinstance(default, float):
        ok = _is_number(v) and (v > 0 if lo is None else v >= lo) and (hi is None or v <= hi)
        if not ok:
            raise _bad(name, key, v, f"a number{rng or ' > 0'}")
        d[key] = float(v)
    elif isinstance(default, str) and not (isinstance(v, str) and v):
        raise _bad(name, key, v, "a non-empty text")


def parse_settings(cls: type, name: str, raw: Mapping[str, Any], strict: bool = True) -> Any:
    """Validate a ``[generator]`` table into ``cls`` (a GuidanceSettings subclass); errors name key and allowed values."""
    keys = tuple(f.name for f in fields(cls))
    unknown = sorted(set(raw) - set(keys))
    if unknown:
        msg = f"generator {name!r}: unknown setting(s) {', '.join(unknown)}; allowed: {', '.join(keys)}"
        if strict:
            raise GeneratorUnavailable(msg)
        log.warning("%s (ignored)", msg)
    d: dict[str, Any] = {k: raw[k] for k in keys if k in raw}
    _check_common(name, d)
    for f in fields(cls):
        if f.name in d and f.name not in COMMON_KEYS:
            _check_own(name, f, d)
    return cls(**d)


def jsonable(d: Mapping[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(d, default=lambda o: list(o) if isinstance(o, tuple) else str(o)))


_HASHES: dict[tuple[str, int, int], str] = {}


def file_sha256(path: Path) -> str:
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in _HASHES:
        _HASHES[key] = sha256_file(path)
    return _HASHES[key]


def fetch_hint(names: Sequence[str]) -> str:
    return f"run: python -m kiosk fetch-models {' '.join(names)}"


def read_init_image(path: Path, width: int, height: int, device: torch.device) -> torch.Tensor:
    """An init picture resized to the canvas, (1, 3, H, W) in [0, 1]; a clear error when unreadable."""
    import numpy as np
    from PIL import Image

    try:
        with Image.open(path) as im:
            pil = im.convert("RGB").resize((width, height), Image.LANCZOS)
    except OSError as exc:
        raise ValueError(f"init image {path}: cannot read it: {exc}") from exc
    x = torch.from_numpy(np.asarray(pil).copy()).permute(2, 0, 1)[None].float() / 255
    return x.to(device)


def _leaves(params: Any) -> list[torch.Tensor]:
    return [params] if isinstance(params, torch.Tensor) else list(params)


def _snapshot(params: Any) -> list[torch.Tensor]:
    return [t.detach().clone() for t in _leaves(params)]


@dataclass
class Canvas:
    """One render's parametrisation: what the loop optimises and how it becomes a picture."""

    params: Any  # a leaf tensor or a list of them (requires_grad)
    image: Callable[[Any], torch.Tensor]  # params -> (1, 3, H, W) in [0, 1], differentiable
    constrain: Callable[[Any], None] | None = None
    lr_scale: Sequence[float] | None = None
    save_extra: Callable[[Any, Path], dict[str, Path]] | None = None  # (params, work_dir) -> extra files
    meta: dict = field(default_factory=dict)
    # Set the parameters from the current picture moved by a (2, 3) pixel affine (zoom mode); None: no zoom.
    warp: Callable[[Any, torch.Tensor], None] | None = None
    # Interpolation space, where it differs from the parameters': ``blend_from`` maps the start and end parameters
    # into it and ``blend_image`` draws a point of it (VQGAN: mix the quantised latents, decode without snapping
    # to the codebook again, so frames move smoothly and the ends are exactly the start and the piece).
    blend_from: Callable[[Any], Any] | None = None
    blend_image: Callable[[Any], torch.Tensor] | None = None


class GuidedGenerator:
    """The render shared by the family; subclasses supply the canvas (and any models it needs)."""

    name = "guided"
    settings_cls: type = GuidanceSettings
    motion_settings = True  # False for a generator whose render() does not run this host's loop
    tiny_label = "CLIP-steered generator with a tiny random-initialised CLIP (no trained weights)"
    title = "CLIP-steered generator"

    def __init__(self, settings: GuidanceSettings, ctx: RenderContext):
        self.settings = settings
        self.device = torch.device(ctx.device)
        self.weights_dir = Path(ctx.weights_dir)
        self._clips: dict[str, tuple[ClipModel, dict]] = {}
        self.prepare(settings)  # fail early and clearly when weights are missing
        for spec in settings.clip_models:
            self._clip(spec)

    @classmethod
    def parse(cls, raw: Mapping[str, Any], strict: bool = True) -> Any:
        s = parse_settings(cls.settings_cls, cls.name, raw, strict)
        if not cls.motion_settings:
            used = [k for k in MOTION_KEYS if getattr(s, k, None)]
            if used:
                raise GeneratorUnavailable(f"generator {cls.name!r} runs its own loop: setting(s) {', '.join(used)} "
                                           "(story, zoom, interpolation) are not available for it")
        return s

    # -- what a subclass supplies ----------------------------------------------
    def prepare(self, s: Any) -> None:
        """Load (and cache) the generator's own models for settings ``s``; GeneratorUnavailable if impossible."""

    def model_ids(self, s: Any) -> dict[str, Any]:
        """Identities (name, file, sha256) of the generator's own models, for the piece's metadata."""
        return {}

    def canvas_size(self, s: Any, width: int, height: int) -> tuple[int, int]:
        return width, height

    def check_memory(self, s: Any, clips: Sequence[ClipModel], width: int, height: int, ctx: RenderContext) -> None:
        """Refuse a canvas that cannot fit before any work starts (optional)."""

    def make_canvas(self, s: Any, width: int, height: int, gen: torch.Generator, device: torch.device,
                    init: torch.Tensor | None, init_path: Path | None) -> Canvas:
        raise NotImplementedError

    def is_tiny(self, s: Any) -> bool:
        return s.tiny

    # -- shared ----------------------------------------------------------------
    @property
    def label(self) -> str:
        return self._label(self.settings)

    def _label(self, s: Any) -> str:
        if self.is_tiny(s):
            return self.tiny_label
        return f"{self.title} guided by {', '.join(s.clip_models)}"

    def _clip(self, spec: str) -> tuple[ClipModel, dict]:
        if spec not in self._clips:
            if spec != "tiny" and clip_weights_path(spec, self.weights_dir) is None:
                raise GeneratorUnavailable(f"CLIP weights for {spec!r} are not in {self.weights_dir}; "
                                           f"{fetch_hint([clip_checkpoint_name(spec)])}")
            try:
                clip = load_clip(spec, self.weights_dir, self.device)
            except (ValueError, FileNotFoundError) as exc:
                raise GeneratorUnavailable(f"setting 'clip_models': {exc}") from exc
            ident = {"name": spec, "weights": "random-init"} if spec == "tiny" else {
                "name": spec, "file": Path(clip.weights).name, "sha256": file_sha256(Path(clip.weights))}
            self._clips[spec] = (clip, ident)
        return self._clips[spec]

    def _effective(self, req: RenderRequest) -> Any:
        merged = asdict(self.settings)
        merged.update(dict(req.params or {}))
        return self.parse(merged, strict=False)

    def clip_terms(self, s: Any, clips: Sequence[ClipModel], prompts: Sequence[tuple[str, float]],
                   gen: torch.Generator, device: torch.device, has_init: bool) -> list:
        weights = torch.tensor([w for _, w in prompts], dtype=torch.float32)
        targets = [c.encode_text([t for t, _ in prompts], device) for c in clips]
        clip_term = ClipTerm(clips=list(clips), targets=targets, prompt_weights=weights, generator=gen,
                             cutouts=s.cutouts, cut_pow=s.init_cut_pow if has_init else s.cut_pow,
                             panorama=s.panorama, semantic=s.symmetry.get("semantic", 0.0),
                             augment=AugmentConfig() if s.augment else None, total_steps=s.steps)
        return [clip_term, SymmetryTerm(edge=s.symmetry.get("edge", 0.0), tone=s.symmetry.get("tone", 0.0))]

    def render(self, req: RenderRequest, ctx: RenderContext) -> RenderResult:
        s = self._effective(req)
        device = torch.device(ctx.device)
        self.prepare(s)
        ids = self.model_ids(s)
        clips = [self._clip(spec) for spec in s.clip_models]
        story = motion.story_schedule(motion.parse_story(s.story), s.steps) if s.story else None
        prompts = story[0][1] if story else [(t, float(w)) for t, w in req.prompts if float(w) != 0.0]
        if not prompts:
            raise ValueError(f"job {req.job_id}: generator {self.name!r} needs at least one prompt with a "
                             "non-zero weight")
        width, height = self.canvas_size(s, req.width, req.height)
        if (width, height) != (req.width, req.height):
            log.info("canvas %dx%d rounded to %dx%d", req.width, req.height, width, height)
        self.check_memory(s, [c for c, _ in clips], width, height, ctx)
        seed = s.seed if s.seed is not None else req.seed
        gen = torch.Generator().manual_seed(seed)
        torch.manual_seed(seed)
        init_path = Path(s.init_image) if s.init_image else req.init_image
        init = read_init_image(init_path, width, height, device) if init_path else None
        canvas = self.make_canvas(s, width, height, gen, device, init, init_path)
        start = _snapshot(canvas.params) if s.interpolate else None
        terms = self.clip_terms(s, [c for c, _ in clips], prompts, gen, device, init_path is not None)
        if story:
            chapters = [(start, terms[0] if i == 0 else self.clip_terms(s, [c for c, _ in clips], ps, gen, device,
                                                                          init_path is not None)[0])
                        for i, (start, ps) in enumerate(story)]
            terms = [motion.StoryTerm(chapters), *terms[1:]]
        zoom = motion.parse_zoom(s.zoom)
        between = self._zoom_hook(s, zoom, canvas, width, height) if zoom else None
        amp_dtype = ctx.dtype if (s.amp and ctx.dtype in (torch.bfloat16, torch.float16)) else None
        fp = self.fingerprint(s, prompts, seed, width, height, init_path)
        cfg = OptimConfig(steps=s.steps, lr=s.lr, lr_schedule=s.lr_schedule, lr_min_frac=s.lr_min_frac,
                          checkpoint_every=s.checkpoint_every, progress_every=s.progress_every,
                          timelapse_every=s.timelapse or (zoom.every if zoom else 0),
                          timelapse_format=s.timelapse_format, fingerprint=fp,
                          amp_dtype=amp_dtype)
        problem = Problem(params=canvas.params, generate=canvas.image, terms=terms, constrain=canvas.constrain,
                          generators=[gen], lr_scale=canvas.lr_scale, between_steps=between)
        res = optimise(problem, cfg, Hooks(work_dir=Path(ctx.work_dir), progress=ctx.progress,
                                           should_stop=ctx.should_stop))
        meta = {
            "generator": self.name, "label": self._label(s), "seed": seed, "width": width, "height": height,
            "prompt": "|".join(f"{t}:{w:g}" for t, w in prompts), "prompts": [list(p) for p in prompts],
            "models": {**ids, "clip": [i for _, i in clips]}, "params": jsonable(asdict(s)),
            "init_image": str(init_path) if init_path else None, "steps_done": res.steps_done,
            "resumed_from": res.resumed_from, "losses": res.losses, "seconds": round(res.seconds, 2),
            **canvas.meta,
        }
        if story:
            meta["story"] = [{"at": start, "prompts": [list(p) for p in ps]} for start, ps in story]
        if zoom:
            meta["zoom"] = {"every": zoom.every, "scale": zoom.scale, "rotate": zoom.rotate, "shift": list(zoom.shift)}
        extra = dict(res.timelapse)
        if start is not None:
            extra.update(self.interpolation(s, canvas, start, Path(ctx.work_dir), amp_dtype, device))
            meta["interpolation_frames"] = s.interpolate
        if canvas.save_extra is not None:
            extra.update(canvas.save_extra(canvas.params, Path(ctx.work_dir)))
        return RenderResult(image=to_pil(res.image), meta=meta, extra_files=extra)

    @torch.no_grad()
    def interpolation(self, s: Any, canvas: Canvas, start: Any, work_dir: Path, amp_dtype: Any,
                      device: torch.device) -> dict[str, Path]:
        """Frames decoded from parameters moved linearly from the start (random codes, init picture) to the end.

        For VQGAN this is latent interpolation (e.g. from an edited piece given as init image to the new one);
        for StyleGAN+CLIP a walk in W; for pixels a crossfade.
        """
        from renderer.guidance.video import write_video

        end = _snapshot(canvas.params)
        if canvas.blend_from is not None:
            start, end = (_snapshot(canvas.blend_from(x[0] if isinstance(canvas.params, torch.Tensor) else x))
                          for x in (start, end))
        frames = []
        n = s.interpolate
        for i in range(n):
            t = i / max(1, n - 1)
            mixed = [a.lerp(b, t) for a, b in zip(_leaves(start), _leaves(end))]
            params = mixed[0] if isinstance(canvas.params, torch.Tensor) else mixed
            with torch.autocast(device_type=device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                frames.append(to_pil((canvas.blend_image or canvas.image)(params).float()))
        return write_video(frames, work_dir, "interpolation", s.timelapse_format, fps=12)

    def _zoom_hook(self, s: Any, zoom: motion.Zoom, canvas: Canvas, width: int, height: int) -> Callable:
        if canvas.warp is None:
            raise ValueError(f"generator {self.name!r}: zoom mode is not available for this generator "
                             "(pixels, fourier, vqgan_clip and clipdraw support it)")
        matrix = motion.zoom_matrix(zoom, width, height)

        def between(done: int, params: Any) -> bool:
            if done % zoom.every or done >= s.steps:
                return False
            canvas.warp(params, matrix)
            if canvas.constrain is not None:
                canvas.constrain(params)
            return True

        return between

    @staticmethod
    def fingerprint(s: Any, prompts: Sequence[tuple[str, float]], seed: int, width: int, height: int,
                    init: Path | None) -> str:
        init_id = None
        if init is not None and Path(init).is_file():
            init_id = file_sha256(Path(init))
        blob = json.dumps({"s": jsonable(asdict(s)), "p": list(prompts), "seed": seed, "w": width, "h": height,
                           "init": init_id}, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()
