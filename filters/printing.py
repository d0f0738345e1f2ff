"""Print-ready files: a PDF at the physical size with bleed and crop marks, and a raster at print resolution.

The default matches the pieces sold at the fair table: 20 x 20 cm at 300 dpi with
3 mm bleed.  The piece fills the trim box exactly; the bleed is filled by
mirroring the piece's edges, so a slightly off cut never shows white and never
loses any of the picture.  The caption (title, prompt, seed) goes on a second
page of the same trim size, to be printed on the back, or as a line under the
trim in the slug area (``caption="below"``).
"""
from __future__ import annotations

import io
import logging
import math
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping

from exhibits.files import atomic_write_bytes
from filters.common import caption_lines, choice, cover, jpeg_bytes, png_bytes, positive, prompt_text
from filters.registry import ExportError, register_exporter

log = logging.getLogger(__name__)

MM_PER_IN = 25.4
PT_PER_IN = 72.0
MARK_GAP_MM = 1.0  # crop marks start this far outside the bleed
MARK_LEN_MM = 5.0
SLUG_MM = 10.0  # extra paper around the bleed for marks and the caption line
MAX_SIZE_CM = 200.0
FONT_CANDIDATES = (
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
)


def mm_to_pt(mm: float) -> float:
    return mm / MM_PER_IN * PT_PER_IN


@contextmanager
def _binary_image_streams() -> Iterator[None]:
    # reportlab ASCII85-encodes image streams by default: 7x slower and 25% larger
    # for a 2400 px print.  Binary streams are valid PDF; restore the global after.
    from reportlab import rl_config

    old = rl_config.useA85
    rl_config.useA85 = 0
    try:
        yield
    finally:
        rl_config.useA85 = old


def _font() -> str:
    """A Unicode TrueType font when one is installed (prompts are not always Latin-1), else Helvetica."""
    from reportlab.pdfbase import pdfmetrics
    from reportlab.pdfbase.ttfonts import TTFont

    if "KioskSans" in pdfmetrics.getRegisteredFontNames():
        return "KioskSans"
    for path in FONT_CANDIDATES:
        if Path(path).is_file():
            pdfmetrics.registerFont(TTFont("KioskSans", path))
            return "KioskSans"
    return "Helvetica"


def print_image(image: Any, width_px: int, height_px: int, bleed_px: int) -> Any:
    """The piece covering the trim at print resolution, with mirrored edges filling the bleed."""
    import numpy as np
    from PIL import Image

    art = cover(image, width_px, height_px)
    if bleed_px <= 0:
        return art
    arr = np.asarray(art)
    pad = min(bleed_px, width_px, height_px)  # symmetric padding cannot exceed the image
    arr = np.pad(arr, ((pad, pad), (pad, pad), (0, 0)), mode="symmetric")
    if pad < bleed_px:
        arr = np.pad(arr, ((bleed_px - pad,) * 2, (bleed_px - pad,) * 2, (0, 0)), mode="edge")
    return Image.fromarray(arr)


def _crop_marks(c: Any, x0: float, y0: float, w: float, h: float, bleed: float) -> None:
    off, length = bleed + mm_to_pt(MARK_GAP_MM), mm_to_pt(MARK_LEN_MM)
    c.saveState()
    c.setStrokeColorCMYK(1, 1, 1, 1)  # registration: shows on every separation
    c.setLineWidth(0.25)
    for x in (x0, x0 + w):
        for y in (y0, y0 + h):
            sx = -1 if x == x0 else 1
            sy = -1 if y == y0 else 1
            c.line(x + sx * off, y, x + sx * (off + length), y)  # horizontal mark
            c.line(x, y + sy * off, x, y + sy * (off + length))  # vertical mark
    c.restoreState()


def _caption_page(c: Any, lines: list[str], w: float, h: float, font: str) -> None:
    from reportlab.lib.utils import simpleSplit

    margin = mm_to_pt(15)
    y = h - margin
    for i, line in enumerate(lines):
        size = 14 if i == 0 else 10
        for part in simpleSplit(line, font, size, w - 2 * margin):
            y -= size * 1.35
            c.setFont(font, size)
            c.drawString(margin, y, part)
        y -= 6


def build_pdf(image: Any, meta: Mapping[str, Any], *, width_cm: float, height_cm: float, bleed_mm: float,
              dpi: int, crop_marks: bool, caption: str, jpeg_quality: int | None = None) -> tuple[bytes, Any]:
    """The PDF bytes and the raster (trim plus bleed) that went into it."""
    from reportlab.lib.utils import ImageReader
    from reportlab.pdfgen import canvas

    w_in, h_in, bleed_in = width_cm * 10 / MM_PER_IN, height_cm * 10 / MM_PER_IN, bleed_mm / MM_PER_IN
    w_px, h_px, bleed_px = math.ceil(w_in * dpi), math.ceil(h_in * dpi), math.ceil(bleed_in * dpi)
    raster = print_image(image, w_px, h_px, bleed_px)

    trim_w, trim_h, bleed = w_in * PT_PER_IN, h_in * PT_PER_IN, bleed_in * PT_PER_IN
    slug = mm_to_pt(max(SLUG_MM, MARK_GAP_MM + MARK_LEN_MM + 1)) if (crop_marks or caption == "below") else 0.0
    page_w, page_h = trim_w + 2 * (bleed + slug), trim_h + 2 * (bleed + slug)
    x0, y0 = bleed + slug, bleed + slug  # trim box origin
    font = _font() if caption != "none" else "Helvetica"

    buf = io.BytesIO()
    with _binary_image_streams():
        c = canvas.Canvas(buf, pagesize=(page_w, page_h), invariant=True,
                          trimBox=(x0, y0, x0 + trim_w, y0 + trim_h),
                          bleedBox=(x0 - bleed, y0 - bleed, x0 + trim_w + bleed, y0 + trim_h + bleed))
        c.setTitle(str(meta.get("title") or "untitled piece"))
        c.setSubject(prompt_text(meta.get("prompt", meta.get("prompts"))))
        c.setCreator("kiosk filters.printing")
        c.setAuthor(str(meta.get("artist") or meta.get("exhibit") or ""))
        # Lossless (Flate) by default; JPEG bytes are embedded as they are (DCTDecode) when asked for.
        source = ImageReader(io.BytesIO(jpeg_bytes(raster, jpeg_quality)) if jpeg_quality else raster)
        c.drawImage(source, x0 - bleed, y0 - bleed, trim_w + 2 * bleed, trim_h + 2 * bleed)
        if crop_marks:
            _crop_marks(c, x0, y0, trim_w, trim_h, bleed)
        lines = caption_lines(meta)
        if caption == "below" and lines:
            c.setFont(font, 6.5)
            c.drawString(x0, y0 - bleed - mm_to_pt(MARK_GAP_MM + MARK_LEN_MM + 2) + 2, "  \u2014  ".join(lines))
        c.showPage()
        if caption == "page" and lines:
            c.setPageSize((trim_w, trim_h))
            c.setTrimBox((0, 0, trim_w, trim_h))
            c.setBleedBox((0, 0, trim_w, trim_h))
            _caption_page(c, lines, trim_w, trim_h, font)
            c.showPage()
        c.save()
    return buf.getvalue(), raster


@register_exporter("print")
def export_print(image: Any, meta: Mapping[str, Any], stage: Path, *, basename: str,
                 size_cm: float = 20.0, width_cm: float | None = None, height_cm: float | None = None,
                 bleed_mm: float = 3.0, dpi: int = 300, crop_marks: bool = True, caption: str = "page",
                 raster: str = "png", jpeg_quality: int | None = None) -> list[Path]:
    """``<base>_print.pdf`` plus ``<base>_print_<dpi>dpi.png|tif`` (trim plus bleed, DPI recorded).

    ``jpeg_quality`` (50-100) embeds the picture as JPEG instead of lossless: a
    quarter of the size for downloads, still far above what 300 dpi paper shows.
    """
    positive("size_cm", size_cm, maximum=MAX_SIZE_CM)
    width_cm = positive("width_cm", size_cm if width_cm is None else width_cm, maximum=MAX_SIZE_CM)
    height_cm = positive("height_cm", size_cm if height_cm is None else height_cm, maximum=MAX_SIZE_CM)
    positive("bleed_mm", bleed_mm, allow_zero=True, maximum=20)
    positive("dpi", dpi, integer=True, maximum=1200)
    if dpi < 300:
        log.warning("print export at %d dpi: below the 300 dpi a print shop expects", dpi)
    if not isinstance(crop_marks, bool):
        raise ExportError(f"option 'crop_marks' must be true or false, got {crop_marks!r}")
    choice("caption", caption, ("page", "below", "none"))
    choice("raster", raster, ("png", "tiff", "none"))
    if jpeg_quality is not None:
        positive("jpeg_quality", jpeg_quality, integer=True, maximum=100)
        if jpeg_quality < 50:
            raise ExportError(f"option 'jpeg_quality' must be between 50 and 100 (or unset), got {jpeg_quality!r}")

    pdf, raster_img = build_pdf(image, meta, width_cm=width_cm, height_cm=height_cm, bleed_mm=bleed_mm,
                                dpi=dpi, crop_marks=crop_marks, caption=caption, jpeg_quality=jpeg_quality)
    out = [atomic_write_bytes(stage / f"{basename}_print.pdf", pdf)]
    if raster == "png":
        out.append(atomic_write_bytes(stage / f"{basename}_print_{dpi}dpi.png",
                                      png_bytes(raster_img, meta, dpi=dpi, compress_level=3)))
    elif raster == "tiff":
        out.append(atomic_write_bytes(stage / f"{basename}_print_{dpi}dpi.tif", _tiff_bytes(raster_img, meta, dpi)))
    return out


def _tiff_bytes(image: Any, meta: Mapping[str, Any], dpi: int) -> bytes:
    import json

    from PIL import TiffImagePlugin

    info = TiffImagePlugin.ImageFileDirectory_v2()
    info[270] = json.dumps(dict(meta), sort_keys=True, default=str)  # ImageDescription
    buf = io.BytesIO()
    image.save(buf, format="TIFF", dpi=(dpi, dpi), compression="tiff_lzw", tiffinfo=info)
    return buf.getvalue()
