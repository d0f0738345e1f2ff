"""The "stylegan" generator: random W+ codes straight into a StyleGAN synthesis network.

Strange Attractions feeds ``ws = randn(num_ws, w_dim) * sigma`` to the synthesis network,
skipping the mapping network, so the image drifts from uncanny to abstract as sigma grows.

Settings (the exhibit's ``[generator]`` table; a job's params may override all but
``checkpoint``):

``checkpoint``   registry name from ``renderer/**/checkpoints.toml`` or a file path (any
                 supported format: NVlabs .pkl, TF .pkl, rosinality .pt, our .safetensors)
``sigma``        float >= 0, or ``sigma_range = [lo, hi]`` drawn uniformly per seed
``mode``         ``"wplus"`` (default: ``ws = randn * sigma``) or ``"truncation"`` (``ws = w_avg + sigma * randn``)
``noise_mode``   ``"const"`` (default), ``"random"`` (seeded) or ``"none"``
``batch``        images per forward pass in :meth:`StyleGANGenerator.render_batch` (default 4)
``compile``      ``"off"`` (default) | ``"default"`` | ``"reduce-overhead"`` | ``"max-autotune"``, or a bool
                 (true = ``"default"``): ``torch.compile`` the synthesis network, compiled at the first
                 image; if compiling fails a warning is logged once and it runs eagerly
``amp``          bool, default true: where the worker renders in bfloat16 on the CPU (``precision``
                 ``"auto"`` on a CPU where bfloat16 measures faster, or ``"bfloat16"``), synthesise under
                 bfloat16 autocast: 2.3-2.9x on such a CPU, images within a mean of 0.1-1.2 of an 8-bit
                 level of float32 (42-50 dB PSNR at official size).  False: always float32 on the CPU.
                 On CUDA the checkpoint's own float16 layers decide, as in NVlabs' code.
``cuda_graphs``  bool, default false: on CUDA, replay each batch size's synthesis from a captured CUDA
                 graph (static buffers, no per-kernel launch cost); needs ``noise_mode`` ``"const"`` or
                 ``"none"`` (a graph would replay the noise of its capture) and ``compile`` off
                 (``"reduce-overhead"`` is compile's own CUDA graphs).  Ignored on the CPU, with one log line.

``compile``, ``cuda_graphs`` and ``amp`` are fixed when the generator is built; a job cannot change them.
See :mod:`renderer.accel`.
"""
from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from renderer import accel
from renderer.base import GeneratorUnavailable, RenderContext, RenderRequest, RenderResult, register
from renderer.stylegan.common import NOISE_MODES, cpu_render_dtype, synthesis_precision
from renderer.stylegan.loaders import LoadedSynthesis, load_synthesis
from renderer.stylegan.unpickle import CheckpointError

log = logging.getLogger(__name__)

MODES = ("wplus", "truncation")
SETTINGS_KEYS = frozenset({"checkpoint", "sigma", "sigma_range", "mode", "noise_mode", "batch", "compile",
                           "cuda_graphs", "amp"})
BUILD_KEYS = ("checkpoint", "compile", "cuda_graphs", "amp")  # fixed when the generator is built
DEFAULT_SIGMA = 1.0
_FAMILY_LABELS = {"stylegan1": "StyleGAN", "stylegan2": "StyleGAN2", "stylegan3": "StyleGAN3"}


def _bad(key: str, value: Any, allowed: str) -> GeneratorUnavailable:
    return GeneratorUnavailable(f"stylegan generator: setting {key}={value!r} is invalid; allowed: {allowed}")


def parse_speed(params: Mapping[str, Any]) -> tuple[str, bool]:
    """The ``compile`` mode and ``cuda_graphs``, validated together with ``noise_mode``; ``amp`` checked."""
    try:
        compile_mode = accel.parse_compile_mode(params.get("compile", False))
    except ValueError:
        raise _bad("compile", params.get("compile"), accel.COMPILE_ALLOWED) from None
    if not isinstance(params.get("amp", True), bool):
        raise _bad("amp", params.get("amp"), "true or false")
    graphs = params.get("cuda_graphs", False)
    if not isinstance(graphs, bool):
        raise _bad("cuda_graphs", graphs, "true or false")
    if graphs:
        noise_mode = params.get("noise_mode", "const")
        if noise_mode not in accel.GRAPH_NOISE_MODES:
            raise GeneratorUnavailable(
                f"stylegan generator: setting cuda_graphs=true needs noise_mode "
                f"{' or '.join(repr(m) for m in accel.GRAPH_NOISE_MODES)}, got noise_mode={noise_mode!r} "
                "(a CUDA graph replays the noise drawn when it was captured)")
        if compile_mode != "off":
            raise GeneratorUnavailable(
                f"stylegan generator: settings cuda_graphs=true and compile={params.get('compile')!r} do not go "
                "together; allowed: one of them (compile = 'reduce-overhead' is compiled code with CUDA graphs)")
    return compile_mode, graphs


def parse_sampling(params: Mapping[str, Any]) -> dict[str, Any]:
    """Validate the settings; returns sigma or sigma_range, mode, noise_mode, batch (and checks the rest)."""
    unknown = sorted(set(params) - SETTINGS_KEYS)
    if unknown:
        raise GeneratorUnavailable(
            f"stylegan generator: unknown setting(s) {', '.join(unknown)}; allowed: {', '.join(sorted(SETTINGS_KEYS))}")
    out: dict[str, Any] = {}
    if "sigma" in params and "sigma_range" in params:
        raise GeneratorUnavailable("stylegan generator: give either sigma or sigma_range, not both")
    if "sigma_range" in params:
        rng = params["sigma_range"]
        if (not isinstance(rng, (list, tuple)) or len(rng) != 2
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0 for v in rng)
                or rng[0] > rng[1]):
            raise _bad("sigma_range", rng, "[lo, hi] with 0 <= lo <= hi")
        out["sigma_range"] = (float(rng[0]), float(rng[1]))
    else:
        sigma = params.get("sigma", DEFAULT_SIGMA)
        if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not math.isfinite(sigma) or sigma < 0:
            raise _bad("sigma", sigma, "a finite number >= 0")
        out["sigma"] = float(sigma)
    out["mode"] = params.get("mode", "wplus")
    if out["mode"] not in MODES:
        raise _bad("mode", out["mode"], ", ".join(MODES))
    out["noise_mode"] = params.get("noise_mode", "const")
    if out["noise_mode"] not in NOISE_MODES:
        raise _bad("noise_mode", out["noise_mode"], ", ".join(NOISE_MODES))
    batch = params.get("batch", 4)
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise _bad("batch", batch, "an integer >= 1")
    out["batch"] = batch
    parse_speed(params)
    return out


def resolve_checkpoint(spec: Any, weights_dir: Path) -> tuple[str, Path]:
    """(name, path) for a registry name or a file path; a missing registry file says how to fetch it."""
    if not isinstance(spec, str) or not spec:
        raise _bad("checkpoint", spec, "a checkpoint name from checkpoints.toml or a file path")
    from renderer import weights

    known = {c.name for c in weights.list_checkpoints()}
    if spec in known:
        return spec, weights.resolve(spec, weights_dir)  # raises WeightsMissing (a GeneratorUnavailable)
    path = Path(os.path.expanduser(spec))
    for candidate in (path, weights_dir / path):
        if candidate.is_file():
            return candidate.stem, candidate
    if os.sep in spec or "." in spec:
        raise GeneratorUnavailable(f"stylegan generator: checkpoint file {spec} not found (also looked in {weights_dir})")
    raise GeneratorUnavailable(
        f"stylegan generator: unknown checkpoint {spec!r}; known: {', '.join(sorted(known)) or '(none)'}; "
        f"run: python -m kiosk fetch-models NAME")


def to_pil(img: torch.Tensor) -> Any:
    """[C, H, W] in [-1, 1] -> PIL RGB."""
    from PIL import Image

    arr = ((img.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    if arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
    return Image.fromarray(arr[:, :, :3], "RGB")


def _fit(image: Any, width: int, height: int) -> Any:
    """Scale to cover ``width`` x ``height`` and centre-crop (no-op when the size already matches)."""
    from PIL import Image

    if image.size == (width, height) or width <= 0 or height <= 0:
        return image
    scale = max(width / image.width, height / image.height)
    w, h = max(width, round(image.width * scale)), max(height, round(image.height * scale))
    image = image.resize((w, h), Image.LANCZOS)
    left, top = (w - width) // 2, (h - height) // 2
    return image.crop((left, top, left + width, top + height))


class StyleGANGenerator:
    """Renders W+ attractors from one loaded synthesis network."""

    name = "stylegan"

    def __init__(self, loaded: LoadedSynthesis, checkpoint_name: str, settings: Mapping[str, Any],
                 device: torch.device, dtype: torch.dtype | None = None) -> None:
        self.loaded = loaded
        self.checkpoint_name = checkpoint_name
        self.settings = dict(settings)
        self.sampling = parse_sampling({k: v for k, v in self.settings.items()})
        self.device = torch.device(device)
        self.net = loaded.net.to(self.device)
        self.net.fp16_enabled = self.device.type == "cuda" and self.net.has_fp16
        self.render_dtype = cpu_render_dtype(self.device, dtype, self.settings.get("amp", True))
        self.compile_mode, cuda_graphs = parse_speed(self.settings)
        self.synthesis_fn = accel.compiled(self.net, self.compile_mode, name=f"StyleGAN {checkpoint_name} synthesis")
        # The CUDA-graph runner (static input/output buffers per batch shape); None: the network runs directly.
        self.runner: accel.GraphRunner | None = None
        if cuda_graphs and self.device.type == "cuda":
            self.runner = accel.synthesis_runner(self.net, self.sampling["noise_mode"])
        elif cuda_graphs:
            log.info("stylegan generator: setting cuda_graphs is for CUDA; ignored on %s", self.device)
        fam = _FAMILY_LABELS.get(loaded.family, loaded.family)
        self.label = f"{fam} ({checkpoint_name}) synthesis fed random W+ codes"

    @property
    def num_ws(self) -> int:
        return self.net.num_ws

    def precision_label(self) -> str:
        """What the synthesis runs in, for the piece's metadata."""
        if self.render_dtype is not None:
            return "bfloat16 autocast"
        return "float16 layers" if self.net.fp16_enabled else "float32"

    def draw(self, seed: int, sampling: Mapping[str, Any]) -> tuple[torch.Tensor, float, torch.Generator]:
        """(ws[num_ws, w_dim], sigma, generator) for ``seed``: sigma is drawn first, then the codes."""
        g = torch.Generator(device="cpu").manual_seed(int(seed) & 0xFFFF_FFFF_FFFF_FFFF)
        if "sigma_range" in sampling:
            lo, hi = sampling["sigma_range"]
            sigma = lo + (hi - lo) * float(torch.rand((), generator=g))
        else:
            sigma = float(sampling["sigma"])
        n = torch.randn(self.net.num_ws, self.net.w_dim, generator=g)
        ws = n * sigma if sampling["mode"] == "wplus" else self.net.w_avg.cpu().unsqueeze(0) + sigma * n
        return ws, sigma, g

    @torch.no_grad()
    def synthesize(self, ws: torch.Tensor, noise_mode: str, generator: torch.Generator | None) -> tuple[torch.Tensor, dict]:
        """Images [N, C, H, W] in [-1, 1] with a NaN/inf guard; the dict says what the guard did."""
        ws = ws.to(self.device)
        info: dict[str, Any] = {"fp16": bool(self.net.fp16_enabled), "precision": self.precision_label()}
        if self.runner is not None:
            accel.check_graph_noise_mode(noise_mode)
            img = self.runner(ws)
        else:
            with synthesis_precision(self.render_dtype):
                img = self.synthesis_fn(ws, noise_mode=noise_mode, generator=generator)
        bad = int((~torch.isfinite(img)).sum())
        if bad and self.net.fp16_enabled:
            log.warning("fp16 synthesis produced %d non-finite values; rerunning in float32", bad)
            self.net.fp16_enabled = False
            try:
                img = self.net(ws, noise_mode=noise_mode, generator=generator)
            finally:
                self.net.fp16_enabled = True
            info["fp16"] = False
            info["fp16_fallback"] = True
            info["precision"] = "float32"
            bad = int((~torch.isfinite(img)).sum())
        if bad:
            img = torch.nan_to_num(img, nan=0.0, posinf=1.0, neginf=-1.0)
            info["nonfinite_fixed"] = bad
        return img.float().clamp(-1, 1), info

    def render(self, req: RenderRequest, ctx: RenderContext) -> RenderResult:
        params = {**self.settings, **dict(req.params)}
        for key in BUILD_KEYS:
            if key in req.params and req.params[key] != self.settings.get(key):
                log.warning("stylegan generator: setting %s is fixed when the generator is built; the job's %s=%r "
                            "is ignored", key, key, req.params[key])
            params[key] = self.settings.get(key)
            if params[key] is None:
                params.pop(key)
        params.pop("checkpoint", None)
        if "sigma" in req.params:
            params.pop("sigma_range", None)
        elif "sigma_range" in req.params:
            params.pop("sigma", None)
        sampling = parse_sampling(params)
        ws, sigma, g = self.draw(req.seed, sampling)
        img, info = self.synthesize(ws.unsqueeze(0), sampling["noise_mode"], g)
        image = _fit(to_pil(img[0]), req.width, req.height)
        meta = {
            "generator": self.name,
            "checkpoint": self.checkpoint_name,
            "checkpoint_sha256": self.loaded.sha256,
            "models": {"stylegan": {"name": self.checkpoint_name, "family": self.loaded.family,
                                    "format": self.loaded.source_format, "sha256": self.loaded.sha256}},
            "family": self.loaded.family,
            "format": self.loaded.source_format,
            "sigma": sigma,
            "mode": sampling["mode"],
            "noise_mode": sampling["noise_mode"],
            "num_ws": self.net.num_ws,
            "w_dim": self.net.w_dim,
            "resolution": self.net.img_resolution,
            "seed": req.seed,
            "label": f"{self.label}, sigma {sigma:.3g}",
            **info,
        }
        ctx.progress({"step": 1, "total": 1, "sigma": sigma})
        return RenderResult(image=image, meta=meta)

    def render_batch(self, seeds: Sequence[int], sigmas: Sequence[float] | None = None) -> list[Any]:
        """PIL images for many seeds (merch runs), ``batch`` at a time; each equals a single render of its seed
        (to float32's rounding; under bfloat16 autocast, to bfloat16's)."""
        if sigmas is not None and len(sigmas) != len(seeds):
            raise ValueError(f"render_batch: {len(seeds)} seeds but {len(sigmas)} sigmas")
        out: list[Any] = []
        step = self.sampling["batch"]
        for start in range(0, len(seeds), step):
            chunk = list(seeds[start:start + step])
            draws = []
            for i, seed in enumerate(chunk):
                sampling = dict(self.sampling)
                if sigmas is not None:
                    sampling.pop("sigma_range", None)
                    sampling["sigma"] = float(sigmas[start + i])
                draws.append(self.draw(seed, sampling))
            ws = torch.stack([d[0] for d in draws])
            gen = draws[0][2] if len(draws) == 1 else None
            if self.sampling["noise_mode"] == "random" and len(draws) > 1:
                imgs = torch.cat([self.synthesize(d[0].unsqueeze(0), "random", d[2])[0] for d in draws])
            else:
                imgs, _ = self.synthesize(ws, self.sampling["noise_mode"], gen)
            out.extend(to_pil(im) for im in imgs)
        return out


def build_generator(settings: Mapping[str, Any], ctx: RenderContext) -> StyleGANGenerator:
    settings = dict(settings)
    parse_sampling(settings)  # fail fast on bad settings, before any file IO
    if "checkpoint" not in settings:
        raise GeneratorUnavailable("stylegan generator: setting 'checkpoint' is required (a registry name or a path)")
    name, path = resolve_checkpoint(settings["checkpoint"], Path(ctx.weights_dir))
    try:
        loaded = load_synthesis(path, cache_dir=Path(ctx.weights_dir) / ".cache" / "stylegan")
    except CheckpointError as exc:
        raise GeneratorUnavailable(f"stylegan generator: {exc}") from exc
    return StyleGANGenerator(loaded, name, settings, ctx.device, ctx.dtype)


@register("stylegan")
def factory(settings: Mapping[str, Any], ctx: RenderContext) -> StyleGANGenerator:
    return build_generator(settings, ctx)
