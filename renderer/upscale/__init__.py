"""Super-resolution for prints: Real-ESRGAN and its relatives, loaded through spandrel.

spandrel detects the architecture from the checkpoint's parameter names (RRDBNet,
SRVGGNetCompact, SwinIR, ...) and reads ``.pth`` files with a restricted unpickler
or ``.safetensors`` directly, so no pickled code runs.  TorchScript files are refused
here: only ``.pth`` and ``.safetensors`` are accepted.

The picture is processed in overlapping tiles so memory stays bounded whatever the
print size; each tile's border is cropped before it is pasted, so seams do not show.

``python -m renderer.upscale MODEL IN.png OUT.png [--device auto]`` is how the
torch-free exporters call it (the web app never imports torch).
"""
from __future__ import annotations

import logging
from functools import lru_cache
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

SAFE_SUFFIXES = (".pth", ".safetensors")
TILE = 256  # input pixels per tile side
OVERLAP = 16  # input pixels of context on each side of a tile


class UpscaleError(RuntimeError):
    """A super-resolution checkpoint cannot be used; the message names the file and why."""


@lru_cache(maxsize=2)
def load_model(path: str, device: str = "cpu") -> Any:
    """A spandrel ``ImageModelDescriptor`` in eval mode on ``device``; cached per (path, device)."""
    import spandrel

    p = Path(path)
    if p.suffix.lower() not in SAFE_SUFFIXES:
        raise UpscaleError(f"upscaler checkpoint {p}: only {', '.join(SAFE_SUFFIXES)} files are loaded")
    if not p.is_file():
        raise UpscaleError(f"upscaler checkpoint {p} does not exist")
    try:
        desc = spandrel.ModelLoader(device=device).load_from_file(p)
    except spandrel.UnsupportedModelError as exc:
        raise UpscaleError(f"upscaler checkpoint {p}: spandrel does not recognise its architecture") from exc
    except (OSError, RuntimeError, KeyError, ValueError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise UpscaleError(f"upscaler checkpoint {p} could not be read: {first}") from exc
    if not isinstance(desc, spandrel.ImageModelDescriptor) or desc.purpose != "SR":
        raise UpscaleError(f"upscaler checkpoint {p} is a {desc.architecture.name} {desc.purpose} model, "
                           f"not a super-resolution model")
    if desc.input_channels != 3 or desc.output_channels != 3:
        raise UpscaleError(f"upscaler checkpoint {p} takes {desc.input_channels} channels; RGB (3) is needed")
    desc.eval()
    log.info("upscaler %s: %s x%d on %s", p.name, desc.architecture.name, desc.scale, device)
    return desc


def describe(path: str, device: str = "cpu") -> dict[str, Any]:
    desc = load_model(path, device)
    return {"architecture": desc.architecture.name, "scale": int(desc.scale)}


def upscale(image: Any, path: str, device: str = "cpu", tile: int = TILE, overlap: int = OVERLAP,
            reduced_precision: bool | None = None) -> Any:
    """The RGB PIL ``image`` enlarged by the model's own scale, tile by tile.

    ``reduced_precision`` (default: on CUDA only) runs the model under autocast with
    ``renderer.device.autocast_dtype`` (bfloat16 where supported, else float16 when the
    architecture allows half precision); results are clamped and returned as 8-bit RGB.
    """
    import numpy as np
    import torch
    from PIL import Image

    from renderer.device import autocast, autocast_dtype

    desc = load_model(path, device)
    dev = torch.device(device)
    if reduced_precision is None:
        reduced_precision = dev.type == "cuda"
    dtype = autocast_dtype(dev) if reduced_precision else torch.float32
    if dtype == torch.float16 and not desc.supports_half:
        dtype = torch.float32
    if dtype == torch.bfloat16 and not desc.supports_bfloat16:
        dtype = torch.float32
    scale = int(desc.scale)
    arr = torch.from_numpy(np.asarray(image.convert("RGB"), np.float32) / 255.0).permute(2, 0, 1)
    _, h, w = arr.shape
    out = torch.zeros(3, h * scale, w * scale)
    with torch.inference_mode(), autocast(dev, dtype):
        for y0 in range(0, h, tile):
            for x0 in range(0, w, tile):
                y1, x1 = min(y0 + tile, h), min(x0 + tile, w)
                ya, xa = max(y0 - overlap, 0), max(x0 - overlap, 0)
                yb, xb = min(y1 + overlap, h), min(x1 + overlap, w)
                patch = arr[:, ya:yb, xa:xb].unsqueeze(0).to(device)
                res = desc(patch)[0].float().clamp_(0, 1).cpu()
                oy, ox = (y0 - ya) * scale, (x0 - xa) * scale
                out[:, y0 * scale:y1 * scale, x0 * scale:x1 * scale] = \
                    res[:, oy:oy + (y1 - y0) * scale, ox:ox + (x1 - x0) * scale]
    pixels = (out.permute(1, 2, 0).numpy() * 255.0 + 0.5).astype(np.uint8)
    return Image.fromarray(pixels, "RGB")
