"""The contract every generator follows, and the registry that finds them by name.

A generator is built once per process from an exhibit's ``[generator]`` table
(``settings``) and then renders many requests.  Instant generators (the
weights-free default, StyleGAN) return after one forward pass; optimising
generators (VQGAN+CLIP) run a loop and report progress through ``ctx.progress``
with one small dict, in the spirit of k-diffusion's callback.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol

log = logging.getLogger(__name__)


class GeneratorUnavailable(RuntimeError):
    """The generator cannot run here (weights missing, bad settings); the message says how to fix it."""


class CheckpointError(ValueError):
    """A checkpoint file is empty, truncated, damaged, not what it claims to be, or asks for something the safe
    loaders refuse. Every loader raises it (never a raw pickle/zip/EOF error) with the file's path in the message,
    so the worker turns off only the exhibit that needs that file."""


class RenderCancelled(RuntimeError):
    """The worker asked the render to stop (SIGTERM, job cancelled); any checkpoint is already on disk."""


@dataclass(frozen=True)
class RenderRequest:
    """One piece to make. ``params`` are the exhibit's generator settings merged with the job's overrides."""

    job_id: int
    exhibit: str
    generator: str
    prompts: tuple[tuple[str, float], ...]
    seed: int
    width: int
    height: int
    params: Mapping[str, Any] = field(default_factory=dict)
    init_image: Path | None = None


@dataclass
class RenderContext:
    """What the worker lends a render: the device chosen once, and hooks back to the store."""

    device: Any  # torch.device
    dtype: Any  # torch.dtype used for autocast where the generator supports it
    weights_dir: Path
    work_dir: Path  # per-job scratch directory: checkpoints, timelapse frames
    progress: Callable[[dict], None] = lambda info: None
    should_stop: Callable[[], bool] = lambda: False


@dataclass
class RenderResult:
    image: Any  # PIL.Image.Image, RGB
    meta: dict = field(default_factory=dict)  # model identities with hashes, effective params, label
    extra_files: dict[str, Path] = field(default_factory=dict)  # e.g. {"timelapse": Path(...)}


class Generator(Protocol):
    name: str
    label: str  # shown in captions, e.g. "weights-free pattern network (no trained model)"

    def render(self, req: RenderRequest, ctx: RenderContext) -> RenderResult: ...


GeneratorFactory = Callable[[Mapping[str, Any], RenderContext], Generator]

_REGISTRY: dict[str, GeneratorFactory] = {}


def register(name: str) -> Callable[[GeneratorFactory], GeneratorFactory]:
    def deco(factory: GeneratorFactory) -> GeneratorFactory:
        if name in _REGISTRY and _REGISTRY[name] is not factory:
            raise ValueError(f"generator {name!r} registered twice")
        _REGISTRY[name] = factory
        return factory

    return deco


def _load_builtin() -> None:
    # Imported lazily (no import-time work): each module registers its factory.
    from renderer import generators  # noqa: F401

    generators.load_all()


def names() -> list[str]:
    _load_builtin()
    return sorted(_REGISTRY)


def build(name: str, settings: Mapping[str, Any], ctx: RenderContext) -> Generator:
    _load_builtin()
    try:
        factory = _REGISTRY[name]
    except KeyError:
        raise GeneratorUnavailable(
            f"unknown generator {name!r}; known generators: {', '.join(sorted(_REGISTRY))}"
        ) from None
    return factory(settings, ctx)
