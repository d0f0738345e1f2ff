"""Enlarging a piece to print resolution, and saying honestly how.

A 768 px piece printed 20 cm wide has about 97 ppi of its own detail; the print shop
wants 300.  Two ways up:

* **a super-resolution model** (Real-ESRGAN and its relatives, through spandrel) when
  one is installed: ``python -m kiosk fetch-models RealESRGAN_x4plus``.  It runs in its
  own process (``python -m renderer.upscale``) unless torch is already loaded here, so
  the web app stays torch-free;
* **careful resampling** when none is: Lanczos, then an unsharp mask sized to the
  enlargement (and linear-light Lanczos when a model's output is brought down to
  size).  No weights needed.

Either way :class:`UpscaleReport` records the source pixels, the method and the
effective resolution, which the caption page and the metadata state.
"""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping

from filters.registry import ExportError

log = logging.getLogger(__name__)

FAMILY = "upscaler"
PREFERRED = ("RealESRGAN_x4plus", "realesr-general-x4v3", "RealESRGAN_x2plus")
CHOICES = ("auto", "resample", "lanczos")  # or the name of an upscaler checkpoint
SUBPROCESS_TIMEOUT = 900


@dataclass(frozen=True)
class UpscaleReport:
    method: str  # "model", "resample" (Lanczos in linear light + sharpening), "lanczos" (plain), "none"
    description: str  # for people: what made the extra pixels
    source_px: tuple[int, int]
    output_px: tuple[int, int]
    model: str | None = None
    architecture: str | None = None
    model_scale: int | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def factor(self) -> float:
        return self.output_px[0] / self.source_px[0]

    def as_meta(self, width_in: float | None = None) -> dict[str, Any]:
        meta: dict[str, Any] = {"method": self.method, "description": self.description,
                                "source_px": list(self.source_px), "output_px": list(self.output_px),
                                "factor": round(self.factor, 3)}
        if self.model:
            meta.update(model=self.model, architecture=self.architecture, model_scale=self.model_scale)
        if width_in:
            meta["source_ppi"] = round(self.source_px[0] / width_in, 1)
            meta["output_ppi"] = round(self.output_px[0] / width_in, 1)
        return meta


# -- colour-correct resampling -------------------------------------------------------------
@lru_cache(maxsize=1)
def _luts() -> tuple[Any, Any]:
    """sRGB byte -> linear float32 (256 entries) and linear in 1/65535 steps -> sRGB byte (65536 entries)."""
    import numpy as np

    a = np.arange(256) / 255.0
    to_linear = np.where(a <= 0.04045, a / 12.92, ((a + 0.055) / 1.055) ** 2.4).astype(np.float32)
    b = np.arange(65536) / 65535.0
    to_srgb = np.where(b <= 0.0031308, b * 12.92, 1.055 * b ** (1 / 2.4) - 0.055)
    return to_linear, (to_srgb * 255.0 + 0.5).astype(np.uint8)


def resample(image: Any, width: int, height: int, *, sharpen: bool = True) -> Any:
    """Lanczos to ``width`` x ``height``, done where it does least harm.

    Enlarging: Lanczos on the sRGB values (in linear light its ringing would show as bright
    halos in dark areas), then an unsharp mask sized to the enlargement.  Reducing (a model's
    4x output brought to print size): Lanczos in linear light, so fine light detail on dark
    ground does not darken.
    """
    import numpy as np
    from PIL import Image, ImageFilter

    image = image.convert("RGB")
    factor = width / image.size[0]
    if factor >= 1.0:
        result = image.resize((width, height), Image.Resampling.LANCZOS)
        if sharpen and factor > 1.2:
            # radius about half an enlarged source pixel; the threshold keeps flat areas and noise calm
            result = result.filter(ImageFilter.UnsharpMask(radius=max(1.0, 0.5 * factor), percent=80, threshold=2))
        return result
    to_linear, to_srgb = _luts()
    lin = to_linear[np.asarray(image)]
    chans = [np.asarray(Image.fromarray(np.ascontiguousarray(lin[..., c]), "F")
                        .resize((width, height), Image.Resampling.LANCZOS)) for c in range(3)]
    out = np.stack(chans, -1)
    return Image.fromarray(to_srgb[(np.clip(out, 0.0, 1.0) * 65535.0 + 0.5).astype(np.uint16)], "RGB")


# -- models ------------------------------------------------------------------------------
def installed_models(weights_dir: str | os.PathLike | None) -> list[str]:
    """Installed upscaler checkpoints, preferred first."""
    if weights_dir is None:
        return []
    from renderer import weights

    rows = [r for r in weights.status(weights_dir) if r["family"] == FAMILY and r["state"] == "installed"]
    names = [r["name"] for r in rows]
    return sorted(names, key=lambda n: (PREFERRED.index(n) if n in PREFERRED else len(PREFERRED), n))


def _model_path(name: str, weights_dir: str | os.PathLike | None) -> Path:
    from renderer import weights

    try:
        ckpt = weights.get_checkpoint(name)
    except weights.WeightsError as exc:
        raise ExportError(f"option 'upscaler': {exc}; or use one of {', '.join(CHOICES)}") from None
    if ckpt.family != FAMILY:
        raise ExportError(f"option 'upscaler': checkpoint {name!r} is a {ckpt.family} model, not an upscaler")
    if weights_dir is None:
        raise ExportError(f"option 'upscaler' = {name!r} needs option 'weights_dir'")
    try:
        return weights.resolve(name, weights_dir)
    except weights.WeightsMissing as exc:
        raise ExportError(f"option 'upscaler': {exc}") from None


def _run_model(image: Any, path: Path) -> tuple[Any, dict[str, Any]]:
    """The model's own enlargement; in this process when torch is already loaded, else in a child process."""
    from PIL import Image

    if "torch" in sys.modules:
        from renderer.upscale import UpscaleError, describe, upscale

        try:
            return upscale(image, str(path)), describe(str(path))
        except UpscaleError as exc:
            raise ExportError(str(exc)) from exc
    with tempfile.TemporaryDirectory(prefix="kiosk-upscale-") as tmp:
        src, dest = Path(tmp) / "in.png", Path(tmp) / "out.png"
        image.save(src, format="PNG", compress_level=1)
        proc = subprocess.run([sys.executable, "-m", "renderer.upscale", str(path), str(src), str(dest)],
                              capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT)
        if proc.returncode != 0:
            reason = (proc.stderr.strip().splitlines() or ["no message"])[-1]
            raise ExportError(f"upscaler {path.name} failed: {reason}")
        with Image.open(dest) as im:
            out = im.convert("RGB")
        return out, json.loads(proc.stdout.strip().splitlines()[-1])


def upscale_to(image: Any, width: int, height: int, *, upscaler: str = "auto",
               weights_dir: str | os.PathLike | None = None) -> tuple[Any, UpscaleReport]:
    """``image`` (already cropped to the print's aspect) at exactly ``width`` x ``height``."""
    from PIL import Image

    if not isinstance(upscaler, str) or not upscaler:
        raise ExportError(f"option 'upscaler' must be one of {', '.join(CHOICES)} or an upscaler checkpoint name, "
                          f"got {upscaler!r}")
    src = image.size
    if width <= src[0] and height <= src[1]:
        out = image.resize((width, height), Image.Resampling.LANCZOS) if (width, height) != src else image
        return out, UpscaleReport("none", "the piece has enough pixels: no enlargement", src, (width, height))
    name = upscaler
    if upscaler == "auto":
        found = installed_models(weights_dir)
        name = found[0] if found else "resample"
    if name == "lanczos":
        out = image.resize((width, height), Image.Resampling.LANCZOS)
        return out, UpscaleReport("lanczos", "enlarged by plain Lanczos resampling", src, (width, height))
    if name == "resample":
        return resample(image, width, height), UpscaleReport(
            "resample", "enlarged by Lanczos resampling with sharpening (no super-resolution model installed)",
            src, (width, height))
    path = _model_path(name, weights_dir)
    big, info = _run_model(image, path)
    scale = int(info["scale"])
    # the model gives scale x the source; Lanczos takes it the rest of the way (usually down)
    out = big if big.size == (width, height) else resample(big, width, height, sharpen=False)
    return out, UpscaleReport("model", f"enlarged {scale}x by the {name} super-resolution model "
                                       f"({info['architecture']}), then resampled to size",
                              src, (width, height), model=name, architecture=str(info["architecture"]),
                              model_scale=scale)
