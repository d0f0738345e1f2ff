"""Exporters from finished pieces: AR texture packs, print PDFs, GLB for web AR, QR codes.

``export(name, piece_image_path, meta, out_dir, **opts)`` runs one exporter by name;
``export_all(...)`` writes every format and the download bundle; ``qr_png``/``qr_svg``
make QR codes for the display and print.
"""
from __future__ import annotations

from typing import Any

from filters.registry import ExportError, export, exporter_options, names, register_exporter

__all__ = ["ExportError", "export", "export_all", "exporter_options", "names", "qr_png", "qr_svg",
           "register_exporter"]


def __getattr__(name: str) -> Any:
    # export_all and the QR helpers live in modules that register exporters; import them on first use.
    if name == "export_all":
        from filters.bundle import export_all

        return export_all
    if name in ("qr_png", "qr_svg"):
        from filters import qr

        return getattr(qr, name)
    raise AttributeError(f"module 'filters' has no attribute {name!r}")
