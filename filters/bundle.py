"""The artist's bundle of one piece: print PDF and print-shop TIFF, desktop AR packs, GLB and USDZ, in one zip.

Phones do not get this zip: they get the "View in AR" page and the print PDF.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

from filters.common import piece_summary, sha256, write_zip
from filters.registry import ExportError, _check_options, export, get_exporter, register_exporter

DEFAULT_FORMATS = ("print", "ar_packs", "glb", "usdz")
DEFAULT_OPTIONS: Mapping[str, Mapping[str, Any]] = {}


def _check_plan(formats: Sequence[str], options: Mapping[str, Mapping[str, Any]] | None) -> dict[str, dict]:
    if isinstance(formats, str) or not formats:
        raise ExportError(f"option 'formats' must be a non-empty list of exporter names, got {formats!r}")
    options = dict(options or {})
    for name in formats:
        if name == "bundle":
            raise ExportError("option 'formats' cannot contain 'bundle' itself")
        get_exporter(name)  # raises with the known names
    stray = sorted(set(options) - set(formats))
    if stray:
        raise ExportError(f"option 'options' has entries {stray} for exporters not in formats {list(formats)}")
    plan = {}
    for name in formats:
        opts = options.get(name) or {}
        if not isinstance(opts, Mapping):
            raise ExportError(f"option 'options[{name!r}]' must be a table of options, got {opts!r}")
        _check_options(name, opts)
        plan[name] = {**DEFAULT_OPTIONS.get(name, {}), **opts}
    return plan


@register_exporter("bundle")
def export_bundle(image: Any, meta: Mapping[str, Any], stage: Path, *, basename: str,
                  formats: Sequence[str] = DEFAULT_FORMATS, options: Mapping[str, Mapping[str, Any]] | None = None,
                  keep_parts: bool = True) -> list[Path]:
    """``<base>_bundle.zip`` holding every format's files; the parts stay beside it unless ``keep_parts`` is false."""
    plan = _check_plan(formats, options)
    parts: list[Path] = []
    part_dir = stage if keep_parts else stage / ".parts"
    part_dir.mkdir(exist_ok=True)
    for name, opts in plan.items():
        parts += get_exporter(name)(image, meta, part_dir, basename=basename, **opts)
    listing = []
    members = []
    for path in parts:
        data = path.read_bytes()
        members.append((path.name, data))
        listing.append({"path": path.name, "bytes": len(data), "sha256": sha256(data)})
    manifest = {"format": "kiosk-download-bundle", "version": 1, "piece": piece_summary(meta),
                "formats": list(plan), "files": listing}
    members.append(("manifest.json", json.dumps(manifest, indent=2, ensure_ascii=False).encode("utf-8")))
    bundle = write_zip(stage / f"{basename}_bundle.zip", members)
    return (parts if keep_parts else []) + [bundle]


def export_all(piece_image_path: str | os.PathLike, meta: Mapping[str, Any] | None, out_dir: str | os.PathLike, *,
               formats: Sequence[str] = DEFAULT_FORMATS, options: Mapping[str, Mapping[str, Any]] | None = None,
               basename: str | None = None, keep_parts: bool = True) -> list[Path]:
    """Every format for one piece plus the bundle zip (last in the list), all written atomically."""
    return export("bundle", piece_image_path, meta, out_dir, basename=basename,
                  formats=tuple(formats), options=options, keep_parts=keep_parts)
