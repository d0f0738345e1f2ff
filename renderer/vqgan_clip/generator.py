"""The ``vqgan_clip`` generator: VQGAN steered by CLIP, with panoramas and symmetry ("Doorways").

Settings (the exhibit's ``[generator]`` table; a job's ``params`` override them):

``vqgan`` (str, default ``"vqgan_imagenet_f16_16384"``)
    A name from ``checkpoints.toml`` (``vqgan_imagenet_f16_16384``, ``vqgan_imagenet_f16_1024``,
    ``vqgan_gumbel_f8_8192``), or a path to an official ``.ckpt`` with its ``.yaml`` beside it, or
    ``"tiny"``: a tiny random-initialised VQGAN (noise demo, no trained weights).
``clip_models`` (list of str, default ``["ViT-B-32:openai"]``)
    open_clip ``ARCH[:TAG]`` names, several at once; weights are
    ``<weights_dir>/open_clip_<ARCH>-<TAG>.safetensors``.  ``["tiny"]``: a tiny random-initialised CLIP.
``steps`` (int, 300) / ``lr`` (float, 0.1; about 0.025 for symmetric pieces, 0.1-0.2 otherwise)
``lr_schedule`` (``"constant"`` | ``"cosine"`` | ``"linear"``, default constant) and ``lr_min_frac`` (0.1)
``cutouts`` (int, 32)
``cut_pow`` (float or ``[start, end]``, 1.0): cutout size power; < 1 favours large patches.
``init_cut_pow`` (float or ``[start, end]``, 2.0): used instead when starting from an init image
    (small patches: fill in detail, keep the layout).
``augment`` (bool, true): rotation, skew, blur, colour jitter, flips, noise on the cutouts.
``panorama`` (``"linear"`` | ``"cosine"`` | ``"smoothstep"`` | ``"none"``, linear): positive prompts
    spread left..right and interpolated by the cutout's x-centre; ``"none"``: every prompt everywhere.
``symmetry`` (table ``{edge, tone, semantic}``, all 0): loss weights; ``semantic`` > 0 also draws half
    the cutouts as mirrored pairs.
``checkpoint_every`` (int, 50): optimisation state saved to the job's work_dir; resumed automatically.
``progress_every`` (int, 10): ``ctx.progress`` with a preview image.
``timelapse`` (int, 0): keep a frame every N steps and return a timelapse (0 = off);
``timelapse_format`` (``"mp4"`` | ``"gif"`` | ``"both"``, mp4).
``seed`` (int, optional): overrides the request's seed.
``amp`` (bool, true): autocast with ``ctx.dtype``.  ``channels_last`` (bool, true, CUDA only).
``compile`` (bool, false): ``torch.compile`` the synthesis.  ``grad_checkpoint`` (``"auto"`` | bool,
auto = canvases above 512x512): recompute decoder blocks in backward.
``init_image`` (path, optional): start from this picture (also ``RenderRequest.init_image``) -- the
    "surgery" workflow: edit a finished piece, then continue from it.
"""
from __future__ import annotations

import hashlib
import json
import logging
import tomllib
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from exhibits.files import sha256_file
from renderer.base import GeneratorUnavailable, RenderContext, RenderRequest, RenderResult, register
from renderer.vqgan_clip import memory
from renderer.vqgan_clip.clip_guidance import ClipModel, clip_checkpoint_name, clip_weights_path, load_clip
from renderer.vqgan_clip.cutouts import AugmentConfig
from renderer.vqgan_clip.losses import PANORAMA_MODES, ClipTerm, SymmetryTerm
from renderer.vqgan_clip.optimise import LR_SCHEDULES, TIMELAPSE_FORMATS, Hooks, OptimConfig, Problem, optimise, to_pil
from renderer.vqgan_clip.vqgan import VQGAN, CheckpointError, load_vqgan, tiny_config

log = logging.getLogger(__name__)

NAME = "vqgan_clip"
CHECKPOINTS_TOML = Path(__file__).with_name("checkpoints.toml")
TINY_LABEL = "VQGAN+CLIP with tiny random-initialised models (noise demo, no trained weights)"


@dataclass(frozen=True)
class Settings:
    vqgan: str = "vqgan_imagenet_f16_16384"
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
    channels_last: bool = True
    compile: bool = False
    grad_checkpoint: Any = "auto"
    init_image: str | None = None

    @property
    def tiny(self) -> bool:
        return self.vqgan == "tiny" or "tiny" in self.clip_models


SETTING_KEYS = tuple(f.name for f in fields(Settings))
SYMMETRY_KEYS = ("edge", "tone", "semantic")


def _bad(key: str, value: Any, allowed: str) -> GeneratorUnavailable:
    return GeneratorUnavailable(f"generator {NAME!r}: setting {key!r} = {value!r}; allowed: {allowed}")


def _pow_value(key: str, v: Any) -> Any:
    if isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0:
        return float(v)
    if isinstance(v, (list, tuple)) and len(v) == 2 and all(isinstance(x, (int, float)) and x > 0 for x in v):
        return (float(v[0]), float(v[1]))
    raise _bad(key, v, "a positive number or [start, end]")


def parse_settings(raw: Mapping[str, Any], strict: bool = True) -> Settings:
    """Validate the ``[generator]`` table; errors name the key and the allowed values."""
    unknown = sorted(set(raw) - set(SETTING_KEYS))
    if unknown:
        msg = f"generator {NAME!r}: unknown setting(s) {', '.join(unknown)}; allowed: {', '.join(SETTING_KEYS)}"
        if strict:
            raise GeneratorUnavailable(msg)
        log.warning("%s (ignored)", msg)
    d: dict[str, Any] = {k: raw[k] for k in SETTING_KEYS if k in raw}
    if "clip_models" in d:
        cm = d["clip_models"]
        if isinstance(cm, str):
            cm = [cm]
        if not cm or not all(isinstance(x, str) and x for x in cm):
            raise _bad("clip_models", cm, "a non-empty list of open_clip names like 'ViT-B-32:openai', or ['tiny']")
        d["clip_models"] = tuple(cm)
    for key in ("steps", "cutouts", "checkpoint_every", "progress_every", "timelapse"):
        if key in d and (not isinstance(d[key], int) or isinstance(d[key], bool) or d[key] < 0
                         or (key in ("steps", "cutouts") and d[key] < 1)):
            raise _bad(key, d[key], "a non-negative integer" if key not in ("steps", "cutouts") else "an integer >= 1")
    for key in ("lr", "lr_min_frac"):
        if key in d and (not isinstance(d[key], (int, float)) or isinstance(d[key], bool) or d[key] <= 0):
            raise _bad(key, d[key], "a positive number")
    for key in ("cut_pow", "init_cut_pow"):
        if key in d:
            d[key] = _pow_value(key, d[key])
    choices = {"lr_schedule": LR_SCHEDULES, "panorama": PANORAMA_MODES, "timelapse_format": TIMELAPSE_FORMATS}
    for key, allowed in choices.items():
        if key in d and d[key] not in allowed:
            raise _bad(key, d[key], ", ".join(allowed))
    if "symmetry" in d:
        sym = d["symmetry"]
        if not isinstance(sym, Mapping) or set(sym) - set(SYMMETRY_KEYS):
            raise _bad("symmetry", sym, "a table with keys edge, tone, semantic")
        if not all(isinstance(v, (int, float)) and v >= 0 for v in sym.values()):
            raise _bad("symmetry", sym, "non-negative weights")
        d["symmetry"] = {k: float(sym.get(k, 0.0)) for k in SYMMETRY_KEYS}
    if "grad_checkpoint" in d and d["grad_checkpoint"] not in ("auto", True, False):
        raise _bad("grad_checkpoint", d["grad_checkpoint"], "'auto', true, false")
    for key in ("augment", "amp", "channels_last", "compile"):
        if key in d and not isinstance(d[key], bool):
            raise _bad(key, d[key], "true or false")
    if "seed" in d and d["seed"] is not None and not isinstance(d["seed"], int):
        raise _bad("seed", d["seed"], "an integer")
    if "vqgan" in d and not (isinstance(d["vqgan"], str) and d["vqgan"]):
        raise _bad("vqgan", d["vqgan"], "a checkpoint name, a path to a .ckpt, or 'tiny'")
    return Settings(**d)


def known_checkpoints() -> dict[str, dict[str, Any]]:
    """Entries of this package's ``checkpoints.toml`` by name."""
    with open(CHECKPOINTS_TOML, "rb") as fh:
        data = tomllib.load(fh)
    return {e["name"]: e for e in data.get("checkpoint", [])}


def _fetch_hint(names: Sequence[str]) -> str:
    return f"run: python -m kiosk fetch-models {' '.join(names)}"


def resolve_vqgan_files(spec: str, weights_dir: Path) -> tuple[Path, Path]:
    """(ckpt, yaml) for a checkpoint name or path; GeneratorUnavailable with the fetch command if missing."""
    known = known_checkpoints()
    if spec in known:
        entry = known[spec]
        ckpt = Path(weights_dir) / entry["filename"]
        extra = [e["filename"] for e in entry.get("extra", []) if e["filename"].endswith(".yaml")]
        yaml_path = Path(weights_dir) / extra[0] if extra else ckpt.with_suffix(".yaml")
        if not (ckpt.is_file() and yaml_path.is_file()):
            raise GeneratorUnavailable(f"VQGAN weights {spec!r} are not in {weights_dir} "
                                       f"(need {ckpt.name} and {yaml_path.name}); {_fetch_hint([spec])}")
        return ckpt, yaml_path
    path = Path(spec).expanduser()
    if path.suffix != ".ckpt" and not path.is_file():
        vq = [n for n, e in known.items() if e["family"] == "vqgan"]
        raise GeneratorUnavailable(f"setting 'vqgan' = {spec!r}: not a known checkpoint ({', '.join(vq)}, tiny) "
                                   "nor a .ckpt path")
    if not path.is_file() or not path.with_suffix(".yaml").is_file():
        raise GeneratorUnavailable(f"setting 'vqgan' = {spec!r}: need {path} and {path.with_suffix('.yaml')}")
    return path, path.with_suffix(".yaml")


_HASHES: dict[tuple[str, int, int], str] = {}


def file_sha256(path: Path) -> str:
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in _HASHES:
        _HASHES[key] = sha256_file(path)
    return _HASHES[key]


def build_tiny_vqgan(seed: int = 0) -> VQGAN:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return VQGAN(tiny_config()).eval().requires_grad_(False)


class VqganClipGenerator:
    name = NAME

    def __init__(self, settings: Settings, ctx: RenderContext):
        self.settings = settings
        self.device = torch.device(ctx.device)
        self.weights_dir = Path(ctx.weights_dir)
        self._vqgans: dict[str, tuple[VQGAN, dict]] = {}
        self._clips: dict[str, tuple[ClipModel, dict]] = {}
        # fail early and clearly when weights are missing
        self._vqgan(settings.vqgan)
        for spec in settings.clip_models:
            self._clip(spec)

    @property
    def label(self) -> str:
        return self._label(self.settings)

    def _label(self, s: Settings) -> str:
        if s.tiny:
            return TINY_LABEL
        return f"VQGAN+CLIP ({Path(s.vqgan).stem} guided by {', '.join(s.clip_models)})"

    def _vqgan(self, spec: str) -> tuple[VQGAN, dict]:
        if spec not in self._vqgans:
            if spec == "tiny":
                model, ident = build_tiny_vqgan(), {"name": "tiny", "weights": "random-init"}
            else:
                ckpt, yml = resolve_vqgan_files(spec, self.weights_dir)
                try:
                    model = load_vqgan(ckpt, yml)
                except CheckpointError as exc:
                    raise GeneratorUnavailable(str(exc)) from exc
                ident = {"name": spec, "file": ckpt.name, "sha256": file_sha256(ckpt)}
            self._vqgans[spec] = (model.to(self.device), ident)
        return self._vqgans[spec]

    def _clip(self, spec: str) -> tuple[ClipModel, dict]:
        if spec not in self._clips:
            if spec != "tiny" and clip_weights_path(spec, self.weights_dir) is None:
                raise GeneratorUnavailable(f"CLIP weights for {spec!r} are not in {self.weights_dir}; "
                                           f"{_fetch_hint([clip_checkpoint_name(spec)])}")
            try:
                clip = load_clip(spec, self.weights_dir, self.device)
            except (ValueError, FileNotFoundError) as exc:
                raise GeneratorUnavailable(f"setting 'clip_models': {exc}") from exc
            ident = {"name": spec, "weights": "random-init"} if spec == "tiny" else {
                "name": spec, "file": Path(clip.weights).name, "sha256": file_sha256(Path(clip.weights))}
            self._clips[spec] = (clip, ident)
        return self._clips[spec]

    def _effective(self, req: RenderRequest) -> Settings:
        merged = asdict(self.settings)
        merged.update(dict(req.params or {}))
        return parse_settings(merged, strict=False)

    def render(self, req: RenderRequest, ctx: RenderContext) -> RenderResult:
        s = self._effective(req)
        device = torch.device(ctx.device)
        vq, vq_id = self._vqgan(s.vqgan)
        clips = [self._clip(spec) for spec in s.clip_models]
        prompts = [(t, float(w)) for t, w in req.prompts if float(w) != 0.0]
        if not prompts:
            raise ValueError(f"job {req.job_id}: generator {NAME!r} needs at least one prompt with a non-zero weight")
        f = vq.factor
        width, height = max(f, req.width // f * f), max(f, req.height // f * f)
        if (width, height) != (req.width, req.height):
            log.info("canvas %dx%d rounded to %dx%d (multiples of %d)", req.width, req.height, width, height, f)
        grad_ckpt = (width * height > 512 * 512) if s.grad_checkpoint == "auto" else bool(s.grad_checkpoint)
        self._check_memory(vq, [c for c, _ in clips], width, height, s, ctx, grad_ckpt)
        seed = s.seed if s.seed is not None else req.seed
        gen = torch.Generator().manual_seed(seed)
        torch.manual_seed(seed)
        init_path = Path(s.init_image) if s.init_image else req.init_image
        z0 = self._initial_latent(vq, init_path, width, height, gen, device)
        z = z0.clone().requires_grad_(True)
        weights = torch.tensor([w for _, w in prompts], dtype=torch.float32)
        targets = [c.encode_text([t for t, _ in prompts], device) for c, _ in clips]
        clip_term = ClipTerm(clips=[c for c, _ in clips], targets=targets, prompt_weights=weights, generator=gen,
                             cutouts=s.cutouts, cut_pow=s.init_cut_pow if init_path else s.cut_pow,
                             panorama=s.panorama, semantic=s.symmetry.get("semantic", 0.0),
                             augment=AugmentConfig() if s.augment else None, total_steps=s.steps)
        terms = [clip_term, SymmetryTerm(edge=s.symmetry.get("edge", 0.0), tone=s.symmetry.get("tone", 0.0))]
        lo, hi = vq.latent_bounds()

        def constrain(p: torch.Tensor) -> None:
            p.copy_(torch.maximum(torch.minimum(p, hi), lo))

        vq.grad_checkpoint = grad_ckpt
        if device.type == "cuda" and s.channels_last:
            vq.to(memory_format=torch.channels_last)
        generate = torch.compile(vq.synth) if s.compile else vq.synth
        amp_dtype = ctx.dtype if (s.amp and ctx.dtype in (torch.bfloat16, torch.float16)) else None
        fp = self._fingerprint(s, prompts, seed, width, height, init_path)
        cfg = OptimConfig(steps=s.steps, lr=s.lr, lr_schedule=s.lr_schedule, lr_min_frac=s.lr_min_frac,
                          checkpoint_every=s.checkpoint_every, progress_every=s.progress_every,
                          timelapse_every=s.timelapse, timelapse_format=s.timelapse_format, fingerprint=fp,
                          amp_dtype=amp_dtype)
        problem = Problem(params=z, generate=generate, terms=terms, constrain=constrain, generators=[gen])
        res = optimise(problem, cfg, Hooks(work_dir=Path(ctx.work_dir), progress=ctx.progress,
                                           should_stop=ctx.should_stop))
        meta = {
            "generator": NAME, "label": self._label(s), "seed": seed, "width": width, "height": height,
            "prompt": "|".join(f"{t}:{w:g}" for t, w in prompts), "prompts": [list(p) for p in prompts],
            "models": {"vqgan": vq_id, "clip": [i for _, i in clips]}, "params": _jsonable(asdict(s)),
            "init_image": str(init_path) if init_path else None, "steps_done": res.steps_done,
            "resumed_from": res.resumed_from, "losses": res.losses, "seconds": round(res.seconds, 2),
        }
        return RenderResult(image=to_pil(res.image), meta=meta, extra_files=dict(res.timelapse))

    def _initial_latent(self, vq: VQGAN, init: Path | None, width: int, height: int, gen: torch.Generator,
                        device: torch.device) -> torch.Tensor:
        if init is None:
            return vq.random_latent(height, width, gen).to(device)
        import numpy as np
        from PIL import Image

        try:
            with Image.open(init) as im:
                pil = im.convert("RGB").resize((width, height), Image.LANCZOS)
        except OSError as exc:
            raise ValueError(f"init image {init}: cannot read it: {exc}") from exc
        x = torch.from_numpy(np.asarray(pil).copy()).permute(2, 0, 1)[None].float() / 255
        return vq.encode(x.to(device) * 2 - 1)

    def _check_memory(self, vq: VQGAN, clips: Sequence[ClipModel], width: int, height: int, s: Settings,
                      ctx: RenderContext, grad_ckpt: bool) -> None:
        dec = memory.DecoderShape.of(vq)
        shapes = [memory.ClipShape.of(c.model) for c in clips]
        device = torch.device(ctx.device)
        free = memory.available_bytes(device)
        if free is None:
            memory.log_cpu_estimate(dec, shapes, width, height, s.cutouts, s.steps)
            return
        act = 2 if (s.amp and ctx.dtype in (torch.bfloat16, torch.float16)) else 4
        est = memory.check_fits(dec, shapes, width, height, s.cutouts, free, act, grad_ckpt)
        log.info("memory estimate for %dx%d: %s", width, height, est)

    @staticmethod
    def _fingerprint(s: Settings, prompts: Sequence[tuple[str, float]], seed: int, width: int, height: int,
                     init: Path | None) -> str:
        init_id = None
        if init is not None and Path(init).is_file():
            init_id = file_sha256(Path(init))
        blob = json.dumps({"s": _jsonable(asdict(s)), "p": list(prompts), "seed": seed, "w": width, "h": height,
                           "init": init_id}, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()


def _jsonable(d: Mapping[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(d, default=lambda o: list(o) if isinstance(o, tuple) else str(o)))


@register(NAME)
def factory(settings: Mapping[str, Any], ctx: RenderContext) -> VqganClipGenerator:
    return VqganClipGenerator(parse_settings(settings), ctx)
