"""Tiny random VQGANs saved as official-style Lightning checkpoints, and tiny render contexts."""
from __future__ import annotations

import sys
import types
from pathlib import Path

import torch

from renderer.base import RenderContext, RenderRequest
from renderer.vqgan_clip.vqgan import VQGAN, config_to_yaml, save_lightning_checkpoint, tiny_config


def _lightning_callback_key():
    """A class living at Lightning's real import path, as official checkpoints key callback states by it."""
    modname = "pytorch_lightning.callbacks.model_checkpoint"
    mod = sys.modules.get(modname)
    if mod is not None and hasattr(mod, "ModelCheckpoint"):
        return mod.ModelCheckpoint, None
    fake = types.ModuleType(modname)

    class ModelCheckpoint:  # stands in for Lightning's class while pickling
        pass

    ModelCheckpoint.__module__ = modname
    ModelCheckpoint.__qualname__ = "ModelCheckpoint"
    fake.ModelCheckpoint = ModelCheckpoint
    return ModelCheckpoint, fake


def write_tiny_vqgan(folder: Path, name: str = "tiny_vq", gumbel: bool = False, seed: int = 0) -> tuple[Path, VQGAN]:
    """Save a random tiny VQGAN as ``<name>.ckpt`` (Lightning layout) with ``<name>.yaml`` beside it."""
    torch.manual_seed(seed)
    cfg = tiny_config(gumbel=gumbel)
    model = VQGAN(cfg).eval()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.yaml").write_text(config_to_yaml(cfg))
    cls, fake = _lightning_callback_key()
    extra = {
        "callbacks": {cls: {"best_model_score": torch.tensor(0.25), "best_model_path": "logs/last.ckpt"}},
        "optimizer_states": [{"state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.zeros(3)}},
                              "param_groups": [{"lr": 4.5e-6, "betas": (0.5, 0.9), "params": [0]}]}],
        "lr_schedulers": [],
        "native_amp_scaling_state": None,
    }
    if fake is not None:
        sys.modules[fake.__name__] = fake
    try:
        path = save_lightning_checkpoint(model, folder / f"{name}.ckpt", extra)
    finally:
        if fake is not None:
            del sys.modules[fake.__name__]
    return path, model


def tiny_ctx(tmp: Path, dtype: torch.dtype = torch.float32, **kw) -> RenderContext:
    return RenderContext(device=torch.device("cpu"), dtype=dtype, weights_dir=tmp / "weights",
                         work_dir=tmp / "work", **kw)


TINY_SETTINGS = {"vqgan": "tiny", "clip_models": ["tiny"], "steps": 6, "cutouts": 8, "progress_every": 1,
                 "checkpoint_every": 0, "lr": 0.1}


def request(prompts=(("a door to heaven", 1.0), ("a door to hell", 1.0)), seed: int = 7, width: int = 48,
            height: int = 32, **params) -> RenderRequest:
    return RenderRequest(job_id=1, exhibit="doorways", generator="vqgan_clip", prompts=tuple(prompts), seed=seed,
                         width=width, height=height, params=params)
