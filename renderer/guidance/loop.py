"""The one optimisation loop: parameters -> image -> loss terms, Adam, checkpoints, progress.

In the spirit of k-diffusion's samplers: the loop knows nothing about VQGAN,
pixels, strokes or CLIP.  A :class:`Problem` gives it the parameters (one leaf
tensor, e.g. a VQGAN latent, or several, e.g. a SIREN's weights or CLIPDraw's
control points, widths and colours, each with an optional learning-rate
multiplier), a ``generate`` function that turns them into an image in [0, 1], a
list of loss terms (``term(image, step) -> {name: tensor}``), an optional
in-place constraint (e.g. clamping z to the codebook's box, stroke widths to a
range), and the random generators whose state must survive a resume.  Progress
is one small dict through ``progress``.

Under float16 autocast (CUDA without bfloat16) the loss is scaled for backward
(``torch.amp.GradScaler``, see :mod:`renderer.accel`): a step whose gradients or
loss are not finite is skipped rather than raised, but a loss that stays
non-finite for ``max_nonfinite_steps`` steps in a row (or gradients that overflow
at every scale) raises :class:`FloatingPointError` naming the step.  bfloat16
and float32 keep no scaler, and a non-finite loss raises at once.

The optimisation state (parameters, Adam state, step, every RNG state, the loss
scale) is written atomically to ``<work_dir>/optim_state.pt`` every ``checkpoint_every``
steps and when a stop is requested; a later run with the same fingerprint
resumes from it and, on the CPU, continues bit-identically.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch

from exhibits.files import atomic_path
from renderer.accel import LossScaling
from renderer.base import RenderCancelled
from renderer.guidance.video import VIDEO_FORMATS, write_video

log = logging.getLogger(__name__)

STATE_FILE = "optim_state.pt"
FRAMES_DIR = "timelapse_frames"
LR_SCHEDULES = ("constant", "cosine", "linear")
TIMELAPSE_FORMATS = VIDEO_FORMATS
# float16 steps in a row whose gradients overflowed: the scale has then backed off from 2**16 to 2**-24.
GRAD_OVERFLOW_LIMIT = 40

LossTerm = Callable[[torch.Tensor, int], Mapping[str, torch.Tensor]]


@dataclass
class OptimConfig:
    steps: int
    lr: float
    lr_schedule: str = "constant"
    lr_min_frac: float = 0.1  # the schedules' final lr as a fraction of lr
    checkpoint_every: int = 0
    progress_every: int = 10
    timelapse_every: int = 0
    timelapse_format: str = "mp4"
    fingerprint: str = ""
    amp_dtype: torch.dtype | None = None  # autocast dtype; None or float32 = off
    max_nonfinite_steps: int = 8  # float16 only: non-finite losses in a row before FloatingPointError

    def lr_at(self, step: int) -> float:
        if self.lr_schedule == "constant" or self.steps <= 1:
            return self.lr
        t = step / (self.steps - 1)
        lo = self.lr * self.lr_min_frac
        if self.lr_schedule == "cosine":
            return lo + (self.lr - lo) * (1 + math.cos(math.pi * t)) / 2
        if self.lr_schedule == "linear":
            return self.lr + (lo - self.lr) * t
        raise ValueError(f"lr_schedule {self.lr_schedule!r}; allowed: {', '.join(LR_SCHEDULES)}")


Params = Any  # a leaf tensor, or a sequence of leaf tensors


@dataclass
class Problem:
    params: Params  # a leaf tensor or a sequence of them; optimised in place and passed to generate/constrain
    generate: Callable[[Params], torch.Tensor]
    terms: Sequence[LossTerm]
    constrain: Callable[[Params], None] | None = None
    generators: Sequence[torch.Generator] = ()
    lr_scale: Sequence[float] | None = None  # per tensor of a sequence: its lr as a multiple of cfg.lr
    # After step ``done`` (1-based) is taken: e.g. zoom-and-rotate the picture between steps.  It may change the
    # parameters in place (under no_grad) and returns True when the optimiser's moments should start afresh.
    between_steps: Callable[[int, Params], bool] | None = None

    def leaves(self) -> list[torch.Tensor]:
        return [self.params] if isinstance(self.params, torch.Tensor) else list(self.params)

    def optimizer(self, lr: float) -> torch.optim.Optimizer:
        leaves = self.leaves()
        if self.lr_scale is None:
            return torch.optim.Adam(leaves, lr=lr)
        if len(self.lr_scale) != len(leaves):
            raise ValueError(f"lr_scale has {len(self.lr_scale)} entries for {len(leaves)} parameter tensors")
        groups = [{"params": [t], "lr": lr * k, "lr_scale": float(k)} for t, k in zip(leaves, self.lr_scale)]
        return torch.optim.Adam(groups, lr=lr)


@dataclass
class Hooks:
    work_dir: Path
    progress: Callable[[dict], None] = lambda info: None
    should_stop: Callable[[], bool] = lambda: False


@dataclass
class OptimResult:
    image: torch.Tensor  # final image in [0, 1], (1, 3, H, W), detached
    steps_done: int
    resumed_from: int  # 0 for a fresh start
    losses: dict[str, float] = field(default_factory=dict)
    timelapse: dict[str, Path] = field(default_factory=dict)
    seconds: float = 0.0
    skipped_steps: int = 0  # float16: steps the loss scaler skipped (non-finite loss or gradients)
    loss_scale: float | None = None  # float16: the scale at the end; None without a scaler


def to_pil(image: torch.Tensor) -> Any:
    """(1, 3, H, W) in [0, 1] -> PIL RGB."""
    from PIL import Image

    arr = image.detach()[0].float().clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(arr, "RGB")


def _rng_state(problem: Problem, device: torch.device) -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state(),
                             "generators": [g.get_state() for g in problem.generators]}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(problem: Problem, state: Mapping[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    for g, s in zip(problem.generators, state["generators"]):
        g.set_state(s)
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def save_state(path: Path, problem: Problem, opt: torch.optim.Optimizer, step: int, cfg: OptimConfig,
               losses: Mapping[str, float], scaling: LossScaling | None = None) -> None:
    if isinstance(problem.params, torch.Tensor):
        params: Any = problem.params.detach().cpu().clone()
    else:
        params = [t.detach().cpu().clone() for t in problem.leaves()]
    state = {"fingerprint": cfg.fingerprint, "step": step, "params": params,
             "optimizer": opt.state_dict(), "rng": _rng_state(problem, problem.leaves()[0].device),
             "losses": dict(losses), "scaler": scaling.state_dict() if scaling is not None else None}
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    log.debug("saved optimisation state at step %d to %s", step, path)


def load_state(path: Path, problem: Problem, opt: torch.optim.Optimizer, cfg: OptimConfig,
               scaling: LossScaling | None = None) -> int:
    """Restore a saved state if it matches ``cfg.fingerprint``; returns the step to continue from (0 if none)."""
    if not path.is_file():
        return 0
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, OSError, EOFError) as exc:
        log.warning("ignoring unreadable optimisation state %s: %s", path, exc)
        return 0
    if state.get("fingerprint") != cfg.fingerprint:
        log.warning("ignoring optimisation state %s: it belongs to different settings", path)
        return 0
    saved = [state["params"]] if isinstance(state["params"], torch.Tensor) else list(state["params"])
    leaves = problem.leaves()
    if len(saved) != len(leaves) or any(tuple(a.shape) != tuple(b.shape) for a, b in zip(saved, leaves)):
        log.warning("ignoring optimisation state %s: parameter shape differs", path)
        return 0
    with torch.no_grad():
        for dest, src in zip(leaves, saved):
            dest.copy_(src.to(dest.device))
    opt.load_state_dict(state["optimizer"])
    _set_rng_state(problem, state["rng"], leaves[0].device)
    if scaling is not None:
        scaling.load_state_dict(state.get("scaler"))
    log.info("resuming optimisation from step %d (%s)", state["step"], path)
    return int(state["step"])


def _save_frame(frames_dir: Path, step: int, image: torch.Tensor, max_width: int = 512) -> None:
    pil = to_pil(image)
    if pil.width > max_width:
        pil = pil.resize((max_width, max(1, round(pil.height * max_width / pil.width))))
    dest = frames_dir / f"{step:07d}.png"
    with atomic_path(dest) as tmp:
        pil.save(tmp, format="PNG")


def write_timelapse(frames_dir: Path, out_dir: Path, fmt: str, fps: int = 12) -> dict[str, Path]:
    """Assemble the saved frames into an H.264 MP4 (PyAV) and/or a GIF (Pillow)."""
    from PIL import Image

    if fmt not in TIMELAPSE_FORMATS:
        raise ValueError(f"timelapse_format {fmt!r}; allowed: {', '.join(TIMELAPSE_FORMATS)}")
    files = sorted(frames_dir.glob("*.png"))
    if not files:
        return {}
    frames = []
    for f in files:
        with Image.open(f) as im:
            frames.append(im.convert("RGB"))
    return write_video(frames, out_dir, "timelapse", fmt, fps)


def optimise(problem: Problem, cfg: OptimConfig, hooks: Hooks) -> OptimResult:
    """Run (or resume) the optimisation; raises RenderCancelled after saving state if asked to stop."""
    z = problem.params
    device = problem.leaves()[0].device
    opt = problem.optimizer(cfg.lr)
    work = Path(hooks.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    state_path = work / STATE_FILE
    amp = cfg.amp_dtype is not None and cfg.amp_dtype != torch.float32
    scaling = LossScaling(device, cfg.amp_dtype if amp else None)
    start = load_state(state_path, problem, opt, cfg, scaling)
    frames_dir = work / FRAMES_DIR
    losses: dict[str, float] = {}
    skipped = bad_loss = overflow = 0
    t0 = time.perf_counter()
    for step in range(start, cfg.steps):
        if hooks.should_stop():
            save_state(state_path, problem, opt, step, cfg, losses, scaling)
            raise RenderCancelled(f"stopped at step {step} of {cfg.steps}; state saved to {state_path}")
        lr = cfg.lr_at(step)
        for group in opt.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device_type=device.type, dtype=cfg.amp_dtype or torch.float32, enabled=amp):
            image = problem.generate(z)
            parts: dict[str, torch.Tensor] = {}
            for term in problem.terms:
                parts.update(term(image, step))
        total = sum(v.float() for v in parts.values())
        finite = bool(torch.isfinite(total))
        if not finite and not scaling.enabled:
            raise FloatingPointError(f"loss became {float(total.detach())} at step {step}: {parts}")
        bad_loss = 0 if finite else bad_loss + 1
        stepped = finite and scaling.step(total, opt)
        overflow = 0 if stepped or not finite else overflow + 1
        if not stepped:
            skipped += 1
            value = float(total.detach())
            log.debug("float16 step %d skipped (loss %s, loss scale %s)", step, value, scaling.scale)
            if bad_loss >= cfg.max_nonfinite_steps:
                raise FloatingPointError(f"loss became {value} at step {step} under float16 autocast, "
                                         f"non-finite for {bad_loss} steps in a row: {parts}")
            if overflow >= GRAD_OVERFLOW_LIMIT:
                raise FloatingPointError(f"gradients not finite at step {step} under float16 autocast for "
                                         f"{overflow} steps in a row, at every loss scale down to {scaling.scale}")
        if problem.constrain is not None:
            with torch.no_grad():
                problem.constrain(z)
        done = step + 1
        if problem.between_steps is not None:
            with torch.no_grad():
                if problem.between_steps(done, z):
                    opt.state.clear()
        losses = {k: float(v.detach()) for k, v in parts.items()}
        losses["total"] = float(total.detach())
        if cfg.progress_every and (done % cfg.progress_every == 0 or done == cfg.steps):
            hooks.progress({"step": done, "total": cfg.steps, "loss": losses["total"], "losses": losses,
                            "image": to_pil(image)})
        if cfg.timelapse_every and done % cfg.timelapse_every == 0:
            _save_frame(frames_dir, done, image)
        if cfg.checkpoint_every and done % cfg.checkpoint_every == 0 and done < cfg.steps:
            save_state(state_path, problem, opt, done, cfg, losses, scaling)
    with torch.no_grad(), torch.autocast(device_type=device.type, dtype=cfg.amp_dtype or torch.float32,
                                         enabled=amp):
        final = problem.generate(z).float().detach()
    timelapse: dict[str, Path] = {}
    if cfg.timelapse_every:
        _save_frame(frames_dir, cfg.steps, final)
        timelapse = write_timelapse(frames_dir, work, cfg.timelapse_format)
    if skipped:
        log.info("float16 loss scaling skipped %d of %d steps (loss scale now %s)", skipped, cfg.steps - start,
                 scaling.scale)
    return OptimResult(image=final, steps_done=cfg.steps, resumed_from=start, losses=losses,
                       timelapse=timelapse, seconds=time.perf_counter() - t0, skipped_steps=skipped,
                       loss_scale=scaling.scale)
