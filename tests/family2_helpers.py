"""Shared by the BigGAN / dVAE / DeepDream tests: hostile files and a tiny render context."""
from __future__ import annotations

import os
import pickle
from pathlib import Path

import torch


class RunsCode:
    """Pickles as a call to ``os.system``: loading it unsafely would create ``marker``."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def malicious_torch_file(path: Path, marker: Path, wrap=lambda evil: {"weights": evil}) -> Path:
    """A ``torch.save`` file (zip format) whose pickle calls ``os.system`` when loaded unsafely."""
    torch.save(wrap(RunsCode(marker)), path)
    return path


def malicious_plain_pickle(path: Path, marker: Path) -> Path:
    path.write_bytes(pickle.dumps(RunsCode(marker), protocol=2))
    return path


def damaged_variants(good: Path, folder: Path) -> dict[str, Path]:
    """Empty, truncated (half) and foreign (a PNG, a text file) versions of ``good``, under its name."""
    from PIL import Image

    data = good.read_bytes()
    out = {}
    for kind in ("empty", "truncated", "png", "text"):
        d = folder / kind
        d.mkdir(parents=True, exist_ok=True)
        p = d / good.name
        if kind == "empty":
            p.write_bytes(b"")
        elif kind == "truncated":
            p.write_bytes(data[: len(data) // 2])
        elif kind == "png":
            Image.new("RGB", (8, 8)).save(p, format="PNG")
        else:
            p.write_text("this is not a checkpoint\n")
        out[kind] = p
    return out
