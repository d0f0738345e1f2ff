"""Exporters found by name, so an exhibit can choose them in TOML.

An exporter is ``fn(image, meta, stage, *, basename, **opts) -> list[Path]``: it
receives the piece already loaded and checked (PIL RGB) and writes its files
into ``stage``, a private folder inside ``out_dir``.  :func:`export` moves them
into ``out_dir`` only when the exporter finished, so a failure leaves nothing
half-written behind.
"""
from __future__ import annotations

import importlib
import inspect
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Mapping

log = logging.getLogger(__name__)

Exporter = Callable[..., list[Path]]

_REGISTRY: dict[str, Exporter] = {}
BUILTIN = ("filters.printing", "filters.ar", "filters.sequence", "filters.glb", "filters.usdz", "filters.qr",
           "filters.bundle")
_loaded = False


class ExportError(ValueError):
    """Bad input to an exporter: the message names the file or the option and what is allowed."""


def register_exporter(name: str) -> Callable[[Exporter], Exporter]:
    def deco(fn: Exporter) -> Exporter:
        if name in _REGISTRY and _REGISTRY[name] is not fn:
            raise ValueError(f"exporter {name!r} registered twice")
        _REGISTRY[name] = fn
        return fn

    return deco


def _load_builtin() -> None:
    global _loaded
    if not _loaded:
        for mod in BUILTIN:
            importlib.import_module(mod)
        _loaded = True


def names() -> list[str]:
    _load_builtin()
    return sorted(_REGISTRY)


def get_exporter(name: str) -> Exporter:
    _load_builtin()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ExportError(f"unknown exporter {name!r}; known exporters: {', '.join(sorted(_REGISTRY))}") from None


def exporter_options(name: str) -> dict[str, Any]:
    """The options an exporter takes, with their defaults."""
    sig = inspect.signature(get_exporter(name))
    return {
        p.name: p.default
        for p in sig.parameters.values()
        if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name != "basename"
    }


def _check_options(name: str, opts: Mapping[str, Any]) -> None:
    allowed = exporter_options(name)
    unknown = sorted(set(opts) - set(allowed))
    if unknown:
        raise ExportError(
            f"exporter {name!r} does not take option(s) {unknown}; allowed: {', '.join(sorted(allowed)) or '(none)'}"
        )


def default_basename(piece_image_path: Path, meta: Mapping[str, Any]) -> str:
    """``piece-<id>`` when the store gave an id, else the image's file stem."""
    pid = meta.get("piece_id", meta.get("id"))
    base = f"piece-{pid}" if pid is not None else piece_image_path.stem
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in base).strip("._")
    return safe or "piece"


def _publish(staged: list[Path], stage: Path, out_dir: Path) -> list[Path]:
    """Move staged files into ``out_dir`` (each an atomic rename on the same filesystem)."""
    final: list[Path] = []
    for path in staged:
        rel = path.relative_to(stage)
        dest = out_dir / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(path, dest)
        final.append(dest)
    return final


def export(name: str, piece_image_path: str | os.PathLike, meta: Mapping[str, Any] | None,
           out_dir: str | os.PathLike, *, basename: str | None = None, **opts: Any) -> list[Path]:
    """Run exporter ``name`` on one finished piece; returns the files written into ``out_dir``."""
    from filters.common import load_piece

    fn = get_exporter(name)
    _check_options(name, opts)
    piece_image_path = Path(piece_image_path)
    meta = dict(meta or {})
    image = load_piece(piece_image_path)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    base = basename or default_basename(piece_image_path, meta)
    stage = Path(tempfile.mkdtemp(prefix=f".export-{name}-", dir=out_dir))
    try:
        staged = fn(image, meta, stage, basename=base, **opts)
        written = _publish([Path(p) for p in staged], stage, out_dir)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    log.info("exporter %s wrote %s", name, ", ".join(p.name for p in written))
    return written
