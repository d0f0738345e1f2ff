"""The ``deepdream`` generator: the 2015 notebook's octaves, jitter and tiled gradient ascent, optionally CLIP-steered.

For each octave (smallest first) the picture is the octave's base plus the
detail dreamt so far (upscaled); each iteration rolls it by a random jitter,
takes the gradient of the chosen layers' mean squared activations (over tiles
with a random offset when the picture is larger than ``tile_size``, so memory
stays bounded at any size), rolls back and steps by ``step_size / mean|g|``.
With ``clip_weight`` > 0 the prompts pull too: the shared CLIP prompt loss over
cutouts adds its own normalised gradient, scaled by ``clip_weight``.  Without an
init image the dream starts from grey noise.

State (octave, iteration, picture, random generator) is saved to the job's work
directory every ``checkpoint_every`` iterations and when the worker asks it to
stop; a later run with the same settings resumes from it.

Settings: ``model`` (``"googlenet-imagenet"`` | ``"inception-v3-imagenet"`` from ``fetch-models``, a path to a
torchvision ``.pth``, or ``"tiny"``: a random-initialised GoogLeNet, patterns without meaning);
``layers`` (``["inception4c"]``; classic names such as ``"mixed4c"`` work for GoogLeNet); ``octaves`` (4);
``octave_scale`` (1.4); ``iterations`` (10 per octave); ``step_size`` (0.01, in [0, 1] pixel units);
``jitter`` (32 px); ``tile_size`` (512; 0 = whole picture at once); ``noise`` (0.1: std of the grey noise
start); ``init_image``; ``clip_weight`` (0 = classic DeepDream, prompts unused); ``clip_models``, ``cutouts``
(16), ``cut_pow``, ``augment``; ``checkpoint_every`` (10); ``progress_every`` (1); ``seed``; ``amp``.
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn.functional as F

from renderer import clip_steered as cs
from renderer.base import GeneratorUnavailable, RenderCancelled, RenderContext, RenderRequest, RenderResult, register
from renderer.deepdream.model import (Classifier, LayerTaps, activation_elems_per_pixel, load_classifier,
                                      random_classifier, resolve_layer)
from renderer.guidance.host import GuidanceSettings, GuidedGenerator, file_sha256, jsonable, read_init_image
from renderer.guidance.loop import to_pil

log = logging.getLogger(__name__)

NAME = "deepdream"
STATE_FILE = "deepdream_state.pt"
TINY_LABEL = "DeepDream on a random-initialised GoogLeNet (patterns of an untrained network, no trained weights)"


_spec = cs.model_spec("a checkpoint name (googlenet-imagenet, inception-v3-imagenet), a .pth path, or 'tiny'")


def _layers(v: Any) -> tuple[str, ...]:
    v = [v] if isinstance(v, str) else v
    if not isinstance(v, (list, tuple)) or not v or not all(isinstance(x, str) and x for x in v):
        raise ValueError("a non-empty list of layer names like 'inception4c' or 'mixed4c'")
    return tuple(v)


def _tile(v: Any) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or (v and v < 32) or v < 0:
        raise ValueError("0 (no tiling) or an integer of at least 32")
    return v


@dataclass(frozen=True)
class Settings(GuidanceSettings):
    """DeepDream's own settings; of the host's, ``steps`` and ``lr`` are unused (octaves x iterations and
    ``step_size`` take their place) and the rest steer the optional CLIP pull."""

    cutouts: int = 16
    panorama: str = "none"
    checkpoint_every: int = 10
    progress_every: int = 1
    model: str = field(default="googlenet-imagenet", metadata={"check": _spec})
    layers: Any = field(default=("inception4c",), metadata={"check": _layers})
    octaves: int = field(default=4, metadata={"min": 1})
    octave_scale: float = field(default=1.4, metadata={"min": 1.0})
    iterations: int = field(default=10, metadata={"min": 1})
    step_size: float = 0.01
    jitter: int = 32
    tile_size: int = field(default=512, metadata={"check": _tile})
    noise: float = field(default=0.1, metadata={"min": 0.0})
    clip_weight: float = field(default=0.0, metadata={"min": 0.0})

    @property
    def tiny(self) -> bool:
        return self.model == "tiny"

    @property
    def total(self) -> int:
        return self.octaves * self.iterations


def parse_settings(raw: Mapping[str, Any], strict: bool = True) -> Settings:
    return DeepDreamGenerator.parse(raw, strict)


def resolve_file(spec: str, weights_dir: Path) -> Path:
    installed = cs.registry_files(spec, "deepdream", weights_dir, "DeepDream")
    if installed is not None:
        return installed[0]
    path = Path(spec).expanduser()
    if not path.is_file():
        raise GeneratorUnavailable(f"setting 'model' = {spec!r}: not a known checkpoint (googlenet-imagenet, "
                                   "inception-v3-imagenet, tiny) nor a torchvision .pth file")
    return path


def octave_sizes(width: int, height: int, octaves: int, scale: float) -> list[tuple[int, int]]:
    """Smallest first; the last is the full canvas."""
    sizes = []
    for i in range(octaves):
        f = scale ** -(octaves - 1 - i)
        sizes.append((max(16, round(width * f)), max(16, round(height * f))))
    return sizes


def _resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    w, h = size
    if x.shape[-1] == w and x.shape[-2] == h:
        return x
    return F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)


def _spans(n: int, tile: int) -> list[tuple[int, int]]:
    """(start, length) tiles covering 0..n; a remainder under half a tile joins the previous tile."""
    starts = list(range(0, n, tile))
    if len(starts) > 1 and n - starts[-1] < tile // 2:
        starts.pop()
    ends = starts[1:] + [n]
    return [(a, b - a) for a, b in zip(starts, ends)]


def dream_gradient(clf: Classifier, taps: LayerTaps, img: torch.Tensor, tile: int, gen: torch.Generator,
                   amp_dtype: torch.dtype | None) -> tuple[torch.Tensor, float]:
    """d(sum over layers of mean act^2)/d img, tile by tile with a random offset; and the objective's value."""
    _, _, h, w = img.shape
    grad = torch.zeros_like(img)
    if not tile or (h <= tile and w <= tile):
        tiles = [(0, 0, h, w)]
        sy = sx = 0
    else:
        sy, sx = (int(v) for v in torch.randint(0, tile, (2,), generator=gen))
        tiles = [(y, x, th, tw) for y, th in _spans(h, tile) for x, tw in _spans(w, tile)]
    rolled = torch.roll(img, shifts=(sy, sx), dims=(-2, -1))
    total = 0.0
    for y, x, th, tw in tiles:
        sub = rolled[:, :, y:y + th, x:x + tw].detach().requires_grad_(True)
        with torch.autocast(device_type=img.device.type, dtype=amp_dtype or torch.float32,
                            enabled=amp_dtype is not None):
            acts = clf.activations(sub, taps)
        obj = sum(a.float().pow(2).mean() for a in acts.values())
        obj.backward()
        grad[:, :, y:y + th, x:x + tw] = sub.grad
        total += float(obj.detach()) * th * tw / (h * w)
    return torch.roll(grad, shifts=(-sy, -sx), dims=(-2, -1)), total


class DeepDreamGenerator(GuidedGenerator):
    """Settings, CLIP models and prompt terms from the guidance host; DeepDream's own octave ascent instead of Adam."""

    name = NAME
    settings_cls = Settings
    motion_settings = False  # its own loop: no story, zoom or interpolation
    tiny_label = TINY_LABEL
    title = "DeepDream"

    def __init__(self, settings: Settings, ctx: RenderContext):
        # Not the host's __init__: CLIP is loaded only when the dream is steered (classic DeepDream needs none).
        self.settings = settings
        self.device = torch.device(ctx.device)
        self.weights_dir = Path(ctx.weights_dir)
        self._clips = {}
        self._models: dict[str, tuple[Classifier, dict]] = {}
        self.prepare(settings)
        if settings.clip_weight:
            for spec in settings.clip_models:
                self._clip(spec)

    def _label(self, s: Settings) -> str:
        if s.tiny:
            return TINY_LABEL
        steer = f", steered by {', '.join(s.clip_models)}" if s.clip_weight else ""
        return f"DeepDream ({Path(s.model).stem}, {', '.join(s.layers)}{steer})"

    def _model(self, spec: str) -> tuple[Classifier, dict]:
        if spec not in self._models:
            if spec == "tiny":
                clf, ident = Classifier(random_classifier("googlenet"), "googlenet"), cs.ModelIdent("tiny")
            else:
                path = resolve_file(spec, self.weights_dir)
                model, arch = cs.checked_load(load_classifier, path)
                clf, ident = Classifier(model, arch), cs.ModelIdent(spec, path.name, file_sha256(path))
            clf.model.to(self.device)
            self._models[spec] = (clf, ident.as_dict())
        return self._models[spec]

    def prepare(self, s: Settings) -> None:
        clf, _ = self._model(s.model)
        try:
            for layer in s.layers:
                resolve_layer(clf.model, layer)
        except ValueError as exc:
            raise GeneratorUnavailable(f"generator {NAME!r}: setting 'layers': {exc}") from exc

    def estimate_bytes(self, clf: Classifier, layers, width: int, height: int, tile: int, clip_bytes: int) -> int:
        pw, ph = (min(width, tile), min(height, tile)) if tile else (width, height)
        per_px = activation_elems_per_pixel(clf.model, layers)
        params = sum(p.numel() for p in clf.model.parameters())
        return int((4 * params + 2 * 4 * per_px * pw * ph + 16 * width * height + clip_bytes) * 1.25 + 256 * 2**20)

    def render(self, req: RenderRequest, ctx: RenderContext) -> RenderResult:
        s = self._effective(req)
        s = dataclasses.replace(s, steps=s.total)  # the CLIP term's schedules run over every iteration
        device = torch.device(ctx.device)
        self.prepare(s)
        clf, ident = self._model(s.model)
        try:
            taps = LayerTaps(clf.model, s.layers)
        except ValueError as exc:
            raise GeneratorUnavailable(f"generator {NAME!r}: setting 'layers': {exc}") from exc
        try:
            return self._render(req, ctx, s, device, clf, ident, taps)
        finally:
            taps.close()

    def _render(self, req: RenderRequest, ctx: RenderContext, s: Settings, device: torch.device, clf: Classifier,
                ident: dict, taps: LayerTaps) -> RenderResult:
        width, height = req.width, req.height
        steer = s.clip_weight > 0
        prompts = [(t, float(w)) for t, w in req.prompts if float(w) != 0.0] if steer else []
        if steer and not prompts:
            raise ValueError(f"job {req.job_id}: a CLIP-steered dream (clip_weight > 0) needs a prompt")
        clips = [self._clip(spec) for spec in s.clip_models] if steer else []
        free = cs.available_bytes(device)
        if free is not None:
            clip_bytes = cs.clip_step_bytes([c for c, _ in clips], s.cutouts) if steer else 0
            cs.check_fits(lambda w, h: self.estimate_bytes(clf, s.layers, w, h, s.tile_size, clip_bytes),
                          width, height, 8, free, "DeepDream")
        amp_dtype = ctx.dtype if (s.amp and ctx.dtype in (torch.bfloat16, torch.float16)) else None
        seed = s.seed if s.seed is not None else req.seed
        gen = torch.Generator().manual_seed(seed)
        init_path = Path(s.init_image) if s.init_image else req.init_image
        if init_path is not None:
            base = read_init_image(init_path, width, height, device)
        else:
            base = (0.5 + s.noise * torch.randn(1, 3, height, width, generator=gen)).clamp(0, 1)
        base = base.to(device)
        sizes = octave_sizes(width, height, s.octaves, s.octave_scale)
        bases = [_resize(base, sz) for sz in sizes]
        terms = self.clip_terms(s, [c for c, _ in clips], prompts, gen, device, init_path is not None) if steer else []
        fp = self.fingerprint(s, prompts, seed, width, height, init_path)
        work = Path(ctx.work_dir)
        work.mkdir(parents=True, exist_ok=True)
        state_path = work / STATE_FILE
        octave, it, img = 0, 0, bases[0].clone()
        resumed_from = 0
        saved = cs.load_run_state(state_path, fp)
        if saved is not None:
            octave, it, img = saved["octave"], saved["iteration"], saved["image"].to(device)
            gen.set_state(saved["rng"])
            resumed_from = octave * s.iterations + it
            log.info("resuming DeepDream from octave %d iteration %d (%s)", octave, it, state_path)
        total = s.octaves * s.iterations
        losses: dict[str, float] = {}
        while octave < s.octaves:
            while it < s.iterations:
                done = octave * s.iterations + it
                if ctx.should_stop():
                    cs.save_run_state(state_path, fp, gen, octave=octave, iteration=it, image=img)
                    raise RenderCancelled(f"stopped at iteration {done} of {total}; state saved to {state_path}")
                jy, jx = (int(v) for v in torch.randint(-s.jitter, s.jitter + 1, (2,), generator=gen))
                rolled = torch.roll(img, shifts=(jy, jx), dims=(-2, -1))
                g, objective = dream_gradient(clf, taps, rolled, s.tile_size, gen, amp_dtype)
                g = g / g.abs().mean().clamp(min=1e-12)
                losses = {"dream": objective}
                if terms:
                    x = rolled.detach().requires_grad_(True)
                    with torch.autocast(device_type=device.type, dtype=amp_dtype or torch.float32,
                                        enabled=amp_dtype is not None):
                        clip_loss = sum(v.float() for t in terms for v in t(x, done).values())
                    clip_loss.backward()
                    g = g - s.clip_weight * x.grad / x.grad.abs().mean().clamp(min=1e-12)
                    losses["prompts"] = float(clip_loss.detach())
                rolled = rolled + s.step_size * g
                img = torch.roll(rolled, shifts=(-jy, -jx), dims=(-2, -1)).clamp(0, 1).detach()
                it += 1
                done += 1
                if s.progress_every and (done % s.progress_every == 0 or done == total):
                    ctx.progress({"step": done, "total": total, "loss": -losses["dream"], "losses": losses,
                                  "image": to_pil(img)})
                if s.checkpoint_every and done % s.checkpoint_every == 0 and done < total:
                    cs.save_run_state(state_path, fp, gen, octave=octave, iteration=it, image=img)
            octave += 1
            it = 0
            if octave < s.octaves:
                detail = img - bases[octave - 1]
                img = (bases[octave] + _resize(detail, sizes[octave])).clamp(0, 1)
        meta = {
            "generator": NAME, "label": self._label(s), "seed": seed, "width": width, "height": height,
            "prompt": "|".join(f"{t}:{w:g}" for t, w in prompts), "prompts": [list(p) for p in prompts],
            "models": {"classifier": {**ident, "arch": clf.arch}, "clip": [i for _, i in clips]},
            "layers": list(taps.names), "params": jsonable(dataclasses.asdict(s)),
            "init_image": str(init_path) if init_path else None, "steps_done": total, "resumed_from": resumed_from,
            "losses": losses,
        }
        return RenderResult(image=to_pil(img), meta=meta)


@register(NAME)
def factory(settings: Mapping[str, Any], ctx: RenderContext) -> DeepDreamGenerator:
    return DeepDreamGenerator(parse_settings(settings), ctx)
