"""QR codes that lead a visitor's phone to a piece's page: PIL image for the display, SVG for print."""
from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Mapping

from exhibits.files import atomic_write_bytes, atomic_write_text
from filters.common import choice, png_bytes, positive
from filters.registry import ExportError, register_exporter

QUIET_ZONE = 4  # modules of white border the standard asks for
ERROR_LEVELS = ("l", "m", "q", "h")


def _make(url: str, error: str) -> Any:
    import segno

    if not isinstance(url, str) or not url.strip():
        raise ExportError(f"QR code needs a non-empty URL, got {url!r}")
    choice("error", error, ERROR_LEVELS)
    return segno.make(url, error=error, micro=False, boost_error=False)


def qr_png(url: str, size_px: int, *, error: str = "m", dark: tuple[int, int, int] = (0, 0, 0),
           light: tuple[int, int, int] = (255, 255, 255)) -> Any:
    """A ``size_px`` square RGB PIL image of the QR code, whole pixels per module, quiet zone included."""
    import numpy as np
    from PIL import Image

    positive("size_px", size_px, integer=True, maximum=16384)
    qr = _make(url, error)
    modules = np.array([list(row) for row in qr.matrix], dtype=bool)
    n = modules.shape[0] + 2 * QUIET_ZONE
    scale = size_px // n
    if scale < 1:
        raise ExportError(f"option 'size_px' = {size_px} is too small for this URL: at least {n} px are needed")
    grid = np.pad(modules, QUIET_ZONE, constant_values=False)
    big = np.kron(grid, np.ones((scale, scale), dtype=bool))
    rgb = np.empty((*big.shape, 3), np.uint8)
    rgb[:] = light
    rgb[big] = dark
    out = Image.new("RGB", (size_px, size_px), light)
    off = (size_px - big.shape[0]) // 2
    out.paste(Image.fromarray(rgb), (off, off))
    return out


def qr_svg(url: str, *, error: str = "m", scale: int = 10, title: str | None = None) -> str:
    """The QR code as a standalone SVG document (vector, for print)."""
    qr = _make(url, error)
    buf = io.BytesIO()
    qr.save(buf, kind="svg", scale=scale, border=QUIET_ZONE, xmldecl=True, title=title)
    return buf.getvalue().decode("utf-8")


@register_exporter("qr")
def export_qr(image: Any, meta: Mapping[str, Any], stage: Path, *, basename: str, url: str | None = None,
              size_px: int = 600, error: str = "m") -> list[Path]:
    """``<base>_qr.png`` and ``<base>_qr.svg`` for ``url`` (default: the piece's ``meta["url"]``)."""
    url = url or meta.get("url")
    if not url:
        raise ExportError("exporter 'qr' needs option 'url' (or a 'url' in the piece metadata)")
    png = qr_png(url, size_px, error=error)
    return [
        atomic_write_bytes(stage / f"{basename}_qr.png", png_bytes(png, {"url": url})),
        atomic_write_text(stage / f"{basename}_qr.svg", qr_svg(url, error=error, title=str(meta.get("title") or url))),
    ]
