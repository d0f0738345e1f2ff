"""What the generators built on other trained models (BigGAN, DALL-E's dVAE, GoogLeNet) share besides the
guidance host: finding their registry files, naming their models in a piece, and the generic half of
the memory models.

The settings, CLIP models, prompt terms and the optimisation loop come from
:mod:`renderer.guidance` (one host for the whole CLIP-steered family); this module only adds what
the guidance host leaves to each generator.  The memory part: given a function that estimates
the bytes of one step at ``width`` x ``height``, find the largest canvas with the same aspect
ratio that fits, and refuse a request that does not with that size in the message.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from exhibits.files import atomic_path
from renderer.base import GeneratorUnavailable
from renderer.checkpoint_io import CheckpointError
from renderer.vqgan_clip import memory
from renderer.vqgan_clip.clip_guidance import ClipModel

log = logging.getLogger(__name__)

GIB = memory.GIB
CanvasTooLarge = memory.CanvasTooLarge


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


# --------------------------------------------------------------------------- memory


def clip_step_bytes(clips: Sequence[ClipModel], cutouts: int, act_bytes: int = 4) -> int:
    """CLIP's share of one step (weights + activations saved for backward over the cutouts)."""
    shapes = [memory.ClipShape.of(c.model) for c in clips]
    return int(4 * sum(c.params for c in shapes) + memory.clip_activation_elems(shapes, cutouts) * act_bytes)


largest_fitting = memory.largest_size_that_fits


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



def model_spec(allowed: str) -> Callable[[Any], str]:
    """A settings ``check`` for the setting that names a model (registry name, file path or ``tiny``)."""
    def check(v: Any) -> str:
        if not (isinstance(v, str) and v):
            raise ValueError(allowed)
        return v
    return check


def checked_load(load: Callable[..., Any], *args: Any) -> Any:
    """``load(*args)``; a refused or damaged checkpoint becomes :class:`GeneratorUnavailable` naming the file, so
    the worker marks the exhibit unavailable with the reason and keeps the others running."""
    try:
        return load(*args)
    except CheckpointError as exc:
        raise GeneratorUnavailable(str(exc)) from exc


def save_run_state(path: Path, fingerprint: str, gen: torch.Generator, **state: Any) -> None:
    """A sampler's or dream's own resumable state (tensors, ints) with its random generator, written atomically."""
    with atomic_path(path) as tmp:
        torch.save({"fingerprint": fingerprint, "rng": gen.get_state(),
                    **{k: v.detach().cpu() if isinstance(v, torch.Tensor) else v for k, v in state.items()}}, tmp)


def load_run_state(path: Path, fingerprint: str) -> dict | None:
    """The state :func:`save_run_state` wrote for these settings, or None (absent, unreadable, other settings)."""
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, OSError, EOFError, ValueError) as exc:
        log.warning("ignoring unreadable run state %s: %s", path, exc)
        return None
    if not isinstance(state, dict) or state.get("fingerprint") != fingerprint:
        log.warning("ignoring run state %s: it belongs to different settings", path)
        return None
    return state
