"""Tiny super-resolution checkpoints in Real-ESRGAN's official formats, with its official parameter names.

``RealESRGAN_x4plus.pth`` is an RRDBNet state dict under ``params_ema``; ``realesr-general-x4v3.pth`` an
SRVGGNetCompact state dict under ``params``. Real checkpoints have 64 features and 23 blocks; these have
8 features (the growth channels stay 32, as spandrel expects) and one block, random weights.
"""
from __future__ import annotations

from pathlib import Path

import torch


def _conv(sd: dict, name: str, cout: int, cin: int, gen: torch.Generator, k: int = 3) -> None:
    sd[f"{name}.weight"] = torch.randn(cout, cin, k, k, generator=gen) * (0.5 / (cin * k * k) ** 0.5)
    sd[f"{name}.bias"] = torch.zeros(cout)


def rrdbnet_state(nf: int = 8, gc: int = 32, blocks: int = 1, seed: int = 0) -> dict[str, torch.Tensor]:
    """RRDBNet (ESRGAN / Real-ESRGAN x4plus) key names and shapes, scale 4."""
    gen = torch.Generator().manual_seed(seed)
    sd: dict[str, torch.Tensor] = {}
    _conv(sd, "conv_first", nf, 3, gen)
    for b in range(blocks):
        for r in (1, 2, 3):
            for i in range(1, 5):
                _conv(sd, f"body.{b}.rdb{r}.conv{i}", gc, nf + (i - 1) * gc, gen)
            _conv(sd, f"body.{b}.rdb{r}.conv5", nf, nf + 4 * gc, gen)
    for name in ("conv_body", "conv_up1", "conv_up2", "conv_hr"):
        _conv(sd, name, nf, nf, gen)
    _conv(sd, "conv_last", 3, nf, gen)
    return sd


def compact_state(nf: int = 8, convs: int = 2, scale: int = 4, seed: int = 0) -> dict[str, torch.Tensor]:
    """SRVGGNetCompact (realesr-general-x4v3) key names and shapes: conv, PReLU, ..., conv to 3*scale^2."""
    gen = torch.Generator().manual_seed(seed)
    sd: dict[str, torch.Tensor] = {}
    _conv(sd, "body.0", nf, 3, gen)
    sd["body.1.weight"] = torch.full((nf,), 0.25)
    for i in range(convs):
        _conv(sd, f"body.{2 * i + 2}", nf, nf, gen)
        sd[f"body.{2 * i + 3}.weight"] = torch.full((nf,), 0.25)
    _conv(sd, f"body.{2 * convs + 2}", 3 * scale * scale, nf, gen)
    return sd


def save_rrdbnet(path: Path, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"params_ema": rrdbnet_state(**kw)}, path)
    return path


def save_compact(path: Path, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"params": compact_state(**kw)}, path)
    return path
