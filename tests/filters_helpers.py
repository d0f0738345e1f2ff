"""Real test images for the exporters, made with numpy."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

META = {
    "piece_id": 7,
    "title": "Doorway 7",
    "prompt": [["a doorway into fog", 1.0], ["neon", 0.5]],
    "seed": 1234,
    "sigma": 0.8,
    "generator": "default",
    "exhibit": "doorways",
}


def gradient(width: int = 256, height: int = 256) -> Image.Image:
    y, x = np.mgrid[0:height, 0:width]
    arr = np.stack([x * 255 // max(width - 1, 1), y * 255 // max(height - 1, 1), (x ^ y) & 255], -1)
    return Image.fromarray(arr.astype(np.uint8), "RGB")


def noise(size: int = 256, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8), "RGB")


def save_piece(path: Path, image: Image.Image | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    (image or gradient()).save(path, format="PNG")
    return path


def listing(folder: Path) -> list[str]:
    """Every entry under ``folder`` (hidden ones too), relative, sorted."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) if folder.exists() else []


def icc_description(icc: bytes | None) -> str:
    """The description of an embedded ICC profile, read back with Pillow's ImageCms ("" when there is none)."""
    import io

    from PIL import ImageCms

    if not icc:
        return ""
    return ImageCms.getProfileDescription(ImageCms.ImageCmsProfile(io.BytesIO(icc))).strip()


def image_icc(data_or_path) -> str:
    """The ICC description of a PNG/JPEG/TIFF file or bytes."""
    import io

    src = io.BytesIO(data_or_path) if isinstance(data_or_path, bytes) else data_or_path
    with Image.open(src) as im:
        return icc_description(im.info.get("icc_profile"))


def pdf_fonts(pdf) -> dict[str, bool]:
    """Every font a pikepdf document's pages use -> whether its program is embedded."""
    fonts: dict[str, bool] = {}
    for page in pdf.pages:
        for name, font in page.obj.get("/Resources", {}).get("/Font", {}).items():
            if "/DescendantFonts" in font:
                font = font.DescendantFonts[0]
            desc = font.get("/FontDescriptor")
            fonts[str(font.get("/BaseFont", name))] = desc is not None and any(
                k in desc for k in ("/FontFile", "/FontFile2", "/FontFile3"))
    return fonts


VENDOR_MODULES = Path(__file__).resolve().parents[1] / "vendor" / "node_modules"


def gltf_validate(path: Path) -> dict:
    """The Khronos glTF validator's report on ``path`` (npm gltf-validator, installed by scripts/test.sh)."""
    import json
    import shutil
    import subprocess

    node = shutil.which("node")
    if node is None or not (VENDOR_MODULES / "gltf-validator").is_dir():
        raise AssertionError("the glTF validator is not installed: run scripts/test.sh "
                             "(it runs `npm ci --prefix vendor`)")
    script = Path(__file__).resolve().parent / "js" / "gltf_validate.mjs"
    proc = subprocess.run([node, str(script), str(VENDOR_MODULES), str(path)], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout)


def usd_validate(path: Path) -> list[str]:
    """Every error usd-core's validators (what ``usdchecker`` runs) find in ``path``."""
    from pxr import Usd, UsdValidation

    stage = Usd.Stage.Open(str(path))
    ctx = UsdValidation.ValidationContext(UsdValidation.ValidationRegistry().GetOrLoadAllValidators())
    return [f"{e.GetName()}: {e.GetMessage()}" for e in ctx.Validate(stage)]
