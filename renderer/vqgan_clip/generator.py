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
``amp`` (bool, true): autocast with ``ctx.dtype``.  ``channels_last`` (bool, true): channels-last decoder
activations (with bfloat16 on the CPU, oneDNN's convolutions run about twice as fast in this layout).
``compile`` (``"off"`` | ``"default"`` | ``"reduce-overhead"`` | ``"max-autotune"``, or a bool: true =
    ``"default"``; default false): ``torch.compile`` the synthesis (decoder) with that mode, compiled at the
    first step.  ``"reduce-overhead"`` adds CUDA graphs on a GPU (on the CPU it is ``"default"``);
    ``"max-autotune"`` tries kernel variants and compiles for minutes.  If compiling fails (no C++
    compiler, no Triton, an unsupported operation) a warning is logged once and the render continues
    eagerly (see :mod:`renderer.accel`).
``grad_checkpoint`` (``"auto"`` | bool, auto = canvases above 512x512): recompute decoder blocks in backward.
``winograd`` (``"auto"`` | bool, false): on the CPU in float32, the decoder's 3x3 convolutions at 128x128 px and
    up run through NNPACK's Winograd kernels, forward and backward, on NCHW activations (``channels_last`` is
    then not used); "auto" only where that measured faster than oneDNN on this machine at start-up.  It changes
    float rounding only (see :mod:`renderer.winograd`); ignored under bfloat16 / float16 autocast and on CUDA.
    Off by default: at real size on a 2-core Zen 4 the step was no faster than with oneDNN's convolutions
    (README, "Speed at real size").
On CUDA without bfloat16 the loop runs float16 autocast with loss scaling (``amp``; see
:mod:`renderer.guidance.loop`).
``init_image`` (path, optional): start from this picture (also ``RenderRequest.init_image``) -- the
    "surgery" workflow: edit a finished piece, then continue from it.
"""
from __future__ import annotations

import logging
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from renderer import accel, winograd
from renderer.base import GeneratorUnavailable, RenderContext, register
from renderer.guidance.host import (Canvas, GuidanceSettings, GuidedGenerator, fetch_hint, file_sha256,
                                    parse_settings as _parse)
from renderer.guidance.motion import warp_image
from renderer.vqgan_clip import memory
from renderer.vqgan_clip.clip_guidance import ClipModel
from renderer.vqgan_clip.vqgan import VQGAN, CheckpointError, load_vqgan, tiny_config

log = logging.getLogger(__name__)

NAME = "vqgan_clip"
CHECKPOINTS_TOML = Path(__file__).with_name("checkpoints.toml")
TINY_LABEL = "VQGAN+CLIP with tiny random-initialised models (noise demo, no trained weights)"


def _auto_or_bool(v: Any) -> Any:
    if v not in ("auto", True, False):
        raise ValueError("'auto', true, false")
    return v


def _compile_setting(v: Any) -> Any:
    try:
        accel.parse_compile_mode(v)
    except ValueError:
        raise ValueError(accel.COMPILE_ALLOWED) from None
    return v


def _vqgan_spec(v: Any) -> str:
    if not (isinstance(v, str) and v):
        raise ValueError("a checkpoint name, a path to a .ckpt, or 'tiny'")
    return v


@dataclass(frozen=True)
class Settings(GuidanceSettings):
    vqgan: str = field(default="vqgan_imagenet_f16_16384", metadata={"check": _vqgan_spec})
    channels_last: bool = True
    compile: Any = field(default=False, metadata={"check": _compile_setting})  # a bool or a mode name
    grad_checkpoint: Any = field(default="auto", metadata={"check": _auto_or_bool})
    winograd: Any = field(default=False, metadata={"check": _auto_or_bool})

    @property
    def tiny(self) -> bool:
        return self.vqgan == "tiny" or "tiny" in self.clip_models


def parse_settings(raw: Mapping[str, Any], strict: bool = True) -> Settings:
    """Validate the ``[generator]`` table; errors name the key and the allowed values."""
    return _parse(Settings, NAME, raw, strict)


def known_checkpoints() -> dict[str, dict[str, Any]]:
    """Entries of this package's ``checkpoints.toml`` by name."""
    with open(CHECKPOINTS_TOML, "rb") as fh:
        data = tomllib.load(fh)
    return {e["name"]: e for e in data.get("checkpoint", [])}


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
                                       f"(need {ckpt.name} and {yaml_path.name}); {fetch_hint([spec])}")
        return ckpt, yaml_path
    path = Path(spec).expanduser()
    if path.suffix != ".ckpt" and not path.is_file():
        vq = [n for n, e in known.items() if e["family"] == "vqgan"]
        raise GeneratorUnavailable(f"setting 'vqgan' = {spec!r}: not a known checkpoint ({', '.join(vq)}, tiny) "
                                   "nor a .ckpt path")
    if not path.is_file() or not path.with_suffix(".yaml").is_file():
        raise GeneratorUnavailable(f"setting 'vqgan' = {spec!r}: need {path} and {path.with_suffix('.yaml')}")
    return path, path.with_suffix(".yaml")


def build_tiny_vqgan(seed: int = 0) -> VQGAN:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return VQGAN(tiny_config()).eval().requires_grad_(False)


class VqganClipGenerator(GuidedGenerator):
    """The Doorways generator: the latent z of a VQGAN, clamped to the codebook's box, decoded and steered."""

    name = NAME
    settings_cls = Settings
    tiny_label = TINY_LABEL

    def __init__(self, settings: Settings, ctx: RenderContext):
        self._vqgans: dict[str, tuple[VQGAN, dict]] = {}
        self._synths: dict[tuple[str, str], Any] = {}
        self.dtype = ctx.dtype  # the worker's precision: fixed for the process
        super().__init__(settings, ctx)

    def _label(self, s: Settings) -> str:
        if s.tiny:
            return TINY_LABEL
        return f"VQGAN+CLIP ({Path(s.vqgan).stem} guided by {', '.join(s.clip_models)})"

    def prepare(self, s: Settings) -> None:
        self._vqgan(s.vqgan)

    def model_ids(self, s: Settings) -> dict[str, Any]:
        return {"vqgan": self._vqgan(s.vqgan)[1]}

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

    def canvas_size(self, s: Settings, width: int, height: int) -> tuple[int, int]:
        f = self._vqgan(s.vqgan)[0].factor
        return max(f, width // f * f), max(f, height // f * f)

    @staticmethod
    def _grad_ckpt(s: Settings, width: int, height: int) -> bool:
        return (width * height > 512 * 512) if s.grad_checkpoint == "auto" else bool(s.grad_checkpoint)

    def check_memory(self, s: Settings, clips: Sequence[ClipModel], width: int, height: int,
                     ctx: RenderContext) -> None:
        vq = self._vqgan(s.vqgan)[0]
        dec = memory.DecoderShape.of(vq)
        shapes = [memory.ClipShape.of(c.model) for c in clips]
        device = torch.device(ctx.device)
        free = memory.available_bytes(device)
        if free is None:
            memory.log_cpu_estimate(dec, shapes, width, height, s.cutouts, s.steps)
            return
        act = 2 if (s.amp and ctx.dtype in (torch.bfloat16, torch.float16)) else 4
        est = memory.check_fits(dec, shapes, width, height, s.cutouts, free, act, self._grad_ckpt(s, width, height))
        log.info("memory estimate for %dx%d: %s", width, height, est)

    def make_canvas(self, s: Settings, width: int, height: int, gen: torch.Generator, device: torch.device,
                    init: torch.Tensor | None, init_path: Path | None) -> Canvas:
        vq = self._vqgan(s.vqgan)[0]
        z0 = vq.random_latent(height, width, gen).to(device) if init is None else vq.encode(init * 2 - 1)
        z = z0.clone().requires_grad_(True)
        lo, hi = vq.latent_bounds()

        def constrain(p: torch.Tensor) -> None:
            p.copy_(torch.maximum(torch.minimum(p, hi), lo))

        vq.grad_checkpoint = self._grad_ckpt(s, width, height)
        autocast = s.amp and self.dtype in (torch.bfloat16, torch.float16)
        wino = not autocast and winograd.wanted(s.winograd, device)
        (winograd.use_winograd if wino else winograd.use_direct)(vq.decoder)
        # NNPACK takes NCHW: channels-last activations would be converted to and fro around every convolution
        vq.to(memory_format=torch.channels_last if s.channels_last and not wino else torch.contiguous_format)
        mode = accel.parse_compile_mode(s.compile)
        if (s.vqgan, mode) not in self._synths:  # one wrapper per model and mode: compiled (or failed) once
            self._synths[(s.vqgan, mode)] = accel.compiled(vq.synth, mode, name=f"VQGAN {s.vqgan} synthesis")
        generate = self._synths[(s.vqgan, mode)]

        def warp(p: torch.Tensor, matrix: torch.Tensor) -> None:
            p.copy_(vq.encode(warp_image(vq.synth(p), matrix) * 2 - 1))

        def blend(p: torch.Tensor) -> torch.Tensor:
            return vq.decode(p).add(1).div(2).clamp(0, 1)

        return Canvas(params=z, image=generate, constrain=constrain, warp=warp, blend_from=vq.quantize_st,
                      blend_image=blend)


@register(NAME)
def factory(settings: Mapping[str, Any], ctx: RenderContext) -> VqganClipGenerator:
    return VqganClipGenerator(parse_settings(settings), ctx)
