"""Print-ready files: a PDF/A-2b at the physical size with bleed and crop marks, and a TIFF for the print shop.

The default matches the pieces sold at the fair table: 20 x 20 cm at 300 dpi with
3 mm bleed.  The piece is enlarged to print resolution first (a super-resolution
model when one is installed, careful resampling otherwise: see ``filters.upscale``)
and fills the trim box exactly; the bleed is filled by mirroring the piece's edges,
so a slightly off cut never shows white and never loses any of the picture.

The caption (title, prompt, seed, sigma as the phone shows it, and how the print
resolution was reached) goes on a second page with the same media, trim and bleed
boxes, to be printed on the back, or as a line under the trim (``caption="below"``).
Text is set in an embedded TrueType font; every raster and the PDF's output intent
carry the sRGB profile.
"""
from __future__ import annotations

import io
import logging
import math
import os
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator, Mapping

from exhibits.files import atomic_write_bytes
from filters.common import (caption_lines, center_crop_aspect, choice, fmt_number, jpeg_bytes, png_bytes, positive,
                            prompt_text, tiff_bytes)
from filters.pdfa import finish_pdfa
from filters.registry import ExportError, register_exporter
from filters.upscale import UpscaleReport, upscale_to

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
FONT_NAME = "KioskSans"


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
    """An embedded TrueType font: DejaVu Sans when installed (wide Unicode coverage), else reportlab's own Vera.

    Never one of the unembedded base-14 fonts (Helvetica): a print shop's RIP and PDF/A both need the font inside.
    """
    import reportlab
    from reportlab.pdfbase import pdfmetrics
    from reportlab.pdfbase.ttfonts import TTFont

    if FONT_NAME in pdfmetrics.getRegisteredFontNames():
        return FONT_NAME
    bundled = str(Path(reportlab.__file__).parent / "fonts" / "Vera.ttf")
    for path in (*FONT_CANDIDATES, bundled):
        if Path(path).is_file():
            pdfmetrics.registerFont(TTFont(FONT_NAME, path))
            return FONT_NAME
    raise ExportError(f"no TrueType font to embed: none of {', '.join(FONT_CANDIDATES)} or {bundled} exists")


def print_image(image: Any, width_px: int, height_px: int, bleed_px: int, *, upscaler: str = "auto",
                weights_dir: str | os.PathLike | None = None) -> tuple[Any, UpscaleReport]:
    """The piece covering the trim at print resolution, with mirrored edges filling the bleed."""
    import numpy as np
    from PIL import Image

    art, report = upscale_to(center_crop_aspect(image, width_px, height_px), width_px, height_px,
                             upscaler=upscaler, weights_dir=weights_dir)
    if bleed_px <= 0:
        return art, report
    arr = np.asarray(art)
    pad = min(bleed_px, width_px, height_px)  # symmetric padding cannot exceed the image
    arr = np.pad(arr, ((pad, pad), (pad, pad), (0, 0)), mode="symmetric")
    if pad < bleed_px:
        arr = np.pad(arr, ((bleed_px - pad,) * 2, (bleed_px - pad,) * 2, (0, 0)), mode="edge")
    return Image.fromarray(arr), report


def _crop_marks(c: Any, x0: float, y0: float, w: float, h: float, bleed: float) -> None:
    off, length = bleed + mm_to_pt(MARK_GAP_MM), mm_to_pt(MARK_LEN_MM)
    c.saveState()
    c.setStrokeGray(0)  # DeviceGray black: allowed beside the sRGB output intent (DeviceCMYK is not)
    c.setLineWidth(0.25)
    for x in (x0, x0 + w):
        for y in (y0, y0 + h):
            sx = -1 if x == x0 else 1
            sy = -1 if y == y0 else 1
            c.line(x + sx * off, y, x + sx * (off + length), y)  # horizontal mark
            c.line(x, y + sy * off, x, y + sy * (off + length))  # vertical mark
    c.restoreState()


def _caption_page(c: Any, lines: list[str], notes: list[str], x0: float, y0: float, w: float, h: float,
                  font: str) -> None:
    """The caption inside the trim box: the piece's lines large, then the print notes small at the bottom."""
    from reportlab.lib.utils import simpleSplit

    margin = mm_to_pt(15)
    y = y0 + h - margin
    for i, line in enumerate(lines):
        size = 14 if i == 0 else 10
        for part in simpleSplit(line, font, size, w - 2 * margin):
            y -= size * 1.35
            c.setFont(font, size)
            c.drawString(x0 + margin, y, part)
        y -= 6
    parts = [p for note in notes for p in simpleSplit(note, font, 7.5, w - 2 * margin)]
    y = y0 + margin + 7.5 * 1.4 * len(parts)
    c.setFillGray(0.25)
    for part in parts:
        y -= 7.5 * 1.4
        c.setFont(font, 7.5)
        c.drawString(x0 + margin, y, part)


def print_notes(meta: Mapping[str, Any], report: UpscaleReport, *, width_cm: float, height_cm: float,
                bleed_mm: float, dpi: int, when: datetime) -> list[str]:
    """How the print was made, stated plainly: size, pixels, the real detail and the enlargement."""
    w_in = width_cm / 2.54
    src_w, src_h = report.source_px
    native = src_w / w_in
    notes = [f"Print: {fmt_number(float(width_cm), 1)} \u00d7 {fmt_number(float(height_cm), 1)} cm trim, "
             f"{fmt_number(float(bleed_mm), 1)} mm bleed, {dpi} ppi "
             f"({report.output_px[0]} \u00d7 {report.output_px[1]} px inside the trim); colour sRGB IEC 61966-2.1."]
    if report.method == "none":
        notes.append(f"Resolution: the piece's own {src_w} \u00d7 {src_h} px give {native:.0f} ppi of real detail "
                     f"at this size.")
    else:
        notes.append(f"Resolution: the piece has {src_w} \u00d7 {src_h} px, {native:.0f} ppi of real detail at this "
                     f"size; it was {report.description}, {report.factor:.2f}\u00d7. Detail beyond {native:.0f} ppi "
                     f"is {'invented by the model' if report.method == 'model' else 'interpolated'}.")
    made = meta.get("created", meta.get("created_at"))
    if isinstance(made, (int, float)):
        made = datetime.fromtimestamp(made, timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    notes.append((f"Piece made {made}; " if made else "") + f"print file made {when.strftime('%Y-%m-%d %H:%M UTC')}.")
    if meta.get("url"):
        notes.append(str(meta["url"]))
    return notes


def build_pdf(image: Any, meta: Mapping[str, Any], *, width_cm: float, height_cm: float, bleed_mm: float,
              dpi: int, crop_marks: bool, caption: str, jpeg_quality: int | None = None, upscaler: str = "auto",
              weights_dir: str | os.PathLike | None = None,
              when: datetime | None = None) -> tuple[bytes, Any, UpscaleReport]:
    """The PDF/A bytes, the raster (trim plus bleed) that went into it, and how it was enlarged."""
    from reportlab.lib.utils import ImageReader
    from reportlab.pdfgen import canvas

    when = when or datetime.now(timezone.utc)
    w_in, h_in, bleed_in = width_cm * 10 / MM_PER_IN, height_cm * 10 / MM_PER_IN, bleed_mm / MM_PER_IN
    w_px, h_px, bleed_px = math.ceil(w_in * dpi), math.ceil(h_in * dpi), math.ceil(bleed_in * dpi)
    raster, report = print_image(image, w_px, h_px, bleed_px, upscaler=upscaler, weights_dir=weights_dir)

    trim_w, trim_h, bleed = w_in * PT_PER_IN, h_in * PT_PER_IN, bleed_in * PT_PER_IN
    slug = mm_to_pt(max(SLUG_MM, MARK_GAP_MM + MARK_LEN_MM + 1)) if (crop_marks or caption == "below") else 0.0
    page_w, page_h = trim_w + 2 * (bleed + slug), trim_h + 2 * (bleed + slug)
    x0, y0 = bleed + slug, bleed + slug  # trim box origin
    lines = caption_lines(meta)
    notes = print_notes(meta, report, width_cm=width_cm, height_cm=height_cm, bleed_mm=bleed_mm, dpi=dpi, when=when)
    font = _font()  # also the canvas's initial font: no page refers to an unembedded Helvetica

    buf = io.BytesIO()
    with _binary_image_streams():
        # every page has the same media, trim and bleed boxes (the caption page is the back of the print)
        c = canvas.Canvas(buf, pagesize=(page_w, page_h), invariant=True, initialFontName=font,
                          trimBox=(x0, y0, x0 + trim_w, y0 + trim_h),
                          bleedBox=(x0 - bleed, y0 - bleed, x0 + trim_w + bleed, y0 + trim_h + bleed))
        # Lossless (Flate) by default; JPEG bytes are embedded as they are (DCTDecode) when asked for.
        source = ImageReader(io.BytesIO(jpeg_bytes(raster, jpeg_quality)) if jpeg_quality else raster)
        c.drawImage(source, x0 - bleed, y0 - bleed, trim_w + 2 * bleed, trim_h + 2 * bleed)
        if crop_marks:
            _crop_marks(c, x0, y0, trim_w, trim_h, bleed)
        if caption == "below" and lines:
            c.setFont(font, 6.5)
            c.drawString(x0, y0 - bleed - mm_to_pt(MARK_GAP_MM + MARK_LEN_MM + 2) + 2, "  \u2014  ".join(lines))
        c.showPage()
        if caption == "page" and lines:
            _caption_page(c, lines, notes, x0, y0, trim_w, trim_h, font)
            if crop_marks:
                _crop_marks(c, x0, y0, trim_w, trim_h, bleed)
            c.showPage()
        c.save()
    keywords = " ".join(notes[:2])
    pdf = finish_pdfa(buf.getvalue(), title=str(meta.get("title") or "untitled piece"),
                      author=str(meta.get("artist") or meta.get("exhibit") or ""),
                      subject=prompt_text(meta.get("prompt", meta.get("prompts"))), keywords=keywords,
                      creator="kiosk filters.printing", created=when)
    return pdf, raster, report


@register_exporter("print")
def export_print(image: Any, meta: Mapping[str, Any], stage: Path, *, basename: str,
                 size_cm: float = 20.0, width_cm: float | None = None, height_cm: float | None = None,
                 bleed_mm: float = 3.0, dpi: int = 300, crop_marks: bool = True, caption: str = "page",
                 raster: str = "tiff", jpeg_quality: int | None = None, upscaler: str = "auto",
                 weights_dir: str | None = None) -> list[Path]:
    """``<base>_print.pdf`` plus ``<base>_print_<dpi>dpi.tif|png`` (trim plus bleed, DPI and sRGB recorded).

    ``raster``: "tiff" (LZW, what print shops ask for), "png", or "none" (the PDF alone).
    ``jpeg_quality`` (50-100) embeds the picture as JPEG instead of lossless: a
    quarter of the size for downloads, still far above what 300 dpi paper shows.
    ``upscaler``: "auto" (an installed super-resolution model from ``weights_dir``, else
    "resample"), "resample", "lanczos", or an upscaler checkpoint's name.
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

    if weights_dir is not None and not isinstance(weights_dir, (str, os.PathLike)):
        raise ExportError(f"option 'weights_dir' must be a folder path, got {weights_dir!r}")

    pdf, raster_img, report = build_pdf(image, meta, width_cm=width_cm, height_cm=height_cm, bleed_mm=bleed_mm,
                                        dpi=dpi, crop_marks=crop_marks, caption=caption, jpeg_quality=jpeg_quality,
                                        upscaler=upscaler, weights_dir=weights_dir)
    out = [atomic_write_bytes(stage / f"{basename}_print.pdf", pdf)]
    raster_meta = {**meta, "print": {"width_cm": width_cm, "height_cm": height_cm, "bleed_mm": bleed_mm, "dpi": dpi,
                                     "color_space": "sRGB IEC61966-2.1",
                                     "upscale": report.as_meta(width_cm / 2.54)}}
    if raster == "png":
        out.append(atomic_write_bytes(stage / f"{basename}_print_{dpi}dpi.png",
                                      png_bytes(raster_img, raster_meta, dpi=dpi, compress_level=3)))
    elif raster == "tiff":
        out.append(atomic_write_bytes(stage / f"{basename}_print_{dpi}dpi.tif",
                                      tiff_bytes(raster_img, raster_meta, dpi)))
    return out
