"""A contact-sheet PDF of a curated set, for the zine table: A4 pages of pieces with their captions.

Each cell holds the piece (JPEG at 300 ppi of its printed size, sRGB) and two caption
lines as the phone shows them (number, seed, sigma with two decimals; then the prompt
or realm pair).  Text is set in the same embedded TrueType font as the print, and the
file is PDF/A-2b with the sRGB output intent, like the print PDF.
"""
from __future__ import annotations

import io
import math
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping, Sequence

from exhibits.files import atomic_write_bytes
from filters.common import center_crop_aspect, fmt_number, jpeg_bytes, load_piece, positive, prompt_text
from filters.pdfa import finish_pdfa
from filters.printing import _font, mm_to_pt
from filters.registry import ExportError

A4_MM = (210.0, 297.0)
MARGIN_MM = 12.0
GAP_MM = 6.0
CAPTION_MM = 9.0
TITLE_MM = 12.0


def caption(meta: Mapping[str, Any]) -> tuple[str, str]:
    facts = [f"#{meta['piece_id']}" if meta.get("piece_id") is not None else None,
             f"seed {meta['seed']}" if meta.get("seed") is not None else None,
             f"sigma {fmt_number(meta['sigma'])}" if meta.get("sigma") is not None else None]
    return " \u00b7 ".join(f for f in facts if f), prompt_text(meta.get("prompt", meta.get("prompts"))) or \
        str(meta.get("title") or "")


def contact_sheet_pdf(items: Sequence[tuple[str | os.PathLike, Mapping[str, Any]]], dest: str | os.PathLike, *,
                      cols: int = 3, title: str = "", dpi: int = 300, when: datetime | None = None) -> Path:
    """Write ``dest``: ``items`` (piece image path, metadata) laid out ``cols`` across on A4 pages."""
    from reportlab.lib.utils import ImageReader, simpleSplit
    from reportlab.pdfgen import canvas

    if not items:
        raise ExportError("a contact sheet needs at least one piece")
    positive("cols", cols, integer=True, maximum=8)
    when = when or datetime.now(timezone.utc)
    page_w, page_h = (mm_to_pt(v) for v in A4_MM)
    margin, gap, cap_h, title_h = (mm_to_pt(v) for v in (MARGIN_MM, GAP_MM, CAPTION_MM, TITLE_MM))
    cell = (page_w - 2 * margin - (cols - 1) * gap) / cols
    rows = max(1, int((page_h - 2 * margin - title_h + gap) // (cell + cap_h + gap)))
    per_page = rows * cols
    px = math.ceil(cell / 72 * dpi)
    font = _font()
    buf = io.BytesIO()
    c = canvas.Canvas(buf, pagesize=(page_w, page_h), invariant=True, initialFontName=font)
    pages = math.ceil(len(items) / per_page)
    for page in range(pages):
        top = page_h - margin
        c.setFont(font, 11)
        c.drawString(margin, top - 11, title or "Contact sheet")
        c.setFont(font, 8)
        c.drawRightString(page_w - margin, top - 11, f"{page + 1} / {pages}")
        for k, (path, meta) in enumerate(items[page * per_page:(page + 1) * per_page]):
            r, col = divmod(k, cols)
            x = margin + col * (cell + gap)
            y = top - title_h - r * (cell + cap_h + gap) - cell
            image = center_crop_aspect(load_piece(Path(path)), 1, 1)
            from PIL import Image

            if image.size[0] > px:
                image = image.resize((px, px), Image.Resampling.LANCZOS)
            c.drawImage(ImageReader(io.BytesIO(jpeg_bytes(image, 90))), x, y, cell, cell)
            first, second = caption(meta)
            c.setFont(font, 7.5)
            c.drawString(x, y - 9, first)
            c.setFillGray(0.3)
            c.setFont(font, 6.5)
            line = (simpleSplit(second, font, 6.5, cell) or [""])[0]
            c.drawString(x, y - 17, line + ("\u2026" if line != second and line else ""))
            c.setFillGray(0)
        c.showPage()
    c.save()
    pdf = finish_pdfa(buf.getvalue(), title=title or "Contact sheet", creator="kiosk filters.sheet", created=when)
    return atomic_write_bytes(Path(dest), pdf)
