"""Shared pieces of the exporters: loading and checking the piece, captions, resizing, encoders.

Every raster the exporters write (PNG, JPEG, TIFF, textures) carries the sRGB ICC
profile, so a print shop's RIP and a phone both know what the numbers mean.
"""
from __future__ import annotations

import hashlib
import io
import json
import math
import threading
import zipfile
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable, Mapping

from exhibits.files import PNG_META_KEY, atomic_path
from filters.registry import ExportError


def load_piece(path: Path) -> Any:
    """Open a finished piece as an RGB PIL image, with errors that name the file."""
    from PIL import Image, UnidentifiedImageError

    if not path.exists():
        raise ExportError(f"piece image {path} does not exist")
    if not path.is_file():
        raise ExportError(f"piece image {path} is not a file")
    if path.stat().st_size == 0:
        raise ExportError(f"piece image {path} is empty (0 bytes)")
    try:
        with Image.open(path) as im:
            im.load()
            image = im.convert("RGB")
    except UnidentifiedImageError as exc:
        raise ExportError(f"piece image {path} is not an image file PIL can read") from exc
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise ExportError(f"piece image {path} could not be decoded: {exc}") from exc
    if min(image.size) < 1:
        raise ExportError(f"piece image {path} has no pixels ({image.size[0]}x{image.size[1]})")
    return image


def positive(name: str, value: Any, *, integer: bool = False, allow_zero: bool = False,
             maximum: float | None = None) -> float:
    """Check a numeric option; raise :class:`ExportError` naming it otherwise."""
    ok_type = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok_type or not math.isfinite(value):
        kind = "an integer" if integer else "a number"
        raise ExportError(f"option {name!r} must be {kind}, got {value!r}")
    if value < 0 or (value == 0 and not allow_zero):
        raise ExportError(f"option {name!r} must be {'>= 0' if allow_zero else '> 0'}, got {value!r}")
    if maximum is not None and value > maximum:
        raise ExportError(f"option {name!r} must be <= {maximum}, got {value!r}")
    return value


def choice(name: str, value: Any, allowed: Iterable[Any]) -> Any:
    allowed = tuple(allowed)
    if value not in allowed:
        raise ExportError(f"option {name!r} must be one of {', '.join(map(repr, allowed))}, got {value!r}")
    return value


@lru_cache(maxsize=1)
def srgb_icc() -> bytes:
    """The sRGB IEC 61966-2.1 ICC profile (LittleCMS's built-in, version 4) as bytes."""
    from PIL import ImageCms

    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def fmt_number(value: Any, digits: int = 2) -> str:
    """Numbers as the phone's piece page shows them: sigma 1.9995 -> "2.00"; integers stay integers."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int):
        return str(value)
    return f"{value:.{digits}f}"


def prompt_text(prompt: Any) -> str:
    """Prompts as the ``text:weight | text`` syntax, whatever shape the metadata holds them in."""
    if prompt is None:
        return ""
    if isinstance(prompt, str):
        return prompt
    parts = []
    for item in prompt:
        if isinstance(item, (list, tuple)) and len(item) == 2:
            text, weight = item
            parts.append(text if float(weight) == 1.0 else f"{text}:{weight:g}")
        else:
            parts.append(str(item))
    return " | ".join(parts)


def caption_lines(meta: Mapping[str, Any]) -> list[str]:
    """A short human caption: title, prompt, then seed / generator / exhibit."""
    lines = []
    if meta.get("title"):
        lines.append(str(meta["title"]))
    prompt = prompt_text(meta.get("prompt", meta.get("prompts")))
    if prompt:
        lines.append(f"\u201c{prompt}\u201d")
    facts = []
    if meta.get("seed") is not None:
        facts.append(f"seed {meta['seed']}")
    if meta.get("sigma") is not None:
        facts.append(f"sigma {fmt_number(meta['sigma'])}")
    gen = meta.get("label") or meta.get("generator")
    if gen:
        facts.append(str(gen))
    if meta.get("exhibit"):
        facts.append(str(meta["exhibit"]))
    if facts:
        lines.append(" \u00b7 ".join(facts))
    return lines


def piece_summary(meta: Mapping[str, Any]) -> dict[str, Any]:
    """The identifying metadata copied into manifests."""
    keys = ("piece_id", "id", "title", "exhibit", "generator", "label", "seed", "sigma", "created")
    out = {k: meta[k] for k in keys if meta.get(k) is not None}
    prompt = prompt_text(meta.get("prompt", meta.get("prompts")))
    if prompt:
        out["prompt"] = prompt
    return out


def center_square(image: Any) -> Any:
    w, h = image.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    return image.crop((left, top, left + side, top + side))


def center_crop_aspect(image: Any, width: int, height: int) -> Any:
    """The largest centred crop of ``image`` with the aspect ratio ``width`` : ``height`` (no resampling)."""
    w, h = image.size
    if w * height > h * width:  # too wide
        cw, ch = max(1, round(h * width / height)), h
    else:
        cw, ch = w, max(1, round(w * height / width))
    if (cw, ch) == (w, h):
        return image
    left, top = (w - cw) // 2, (h - ch) // 2
    return image.crop((left, top, left + cw, top + ch))


def square_texture(image: Any, size: int) -> Any:
    """Centre-crop to a square, then Lanczos-resize to ``size`` x ``size``."""
    from PIL import Image

    return center_square(image).resize((size, size), Image.Resampling.LANCZOS)


_TEXTURES: dict[tuple, bytes] = {}
_TEXTURE_CACHE_ITEMS = 24
_TEXTURE_LOCK = threading.Lock()  # the web app exports from several threads


def texture_bytes(image: Any, size: int, fmt: str, *, quality: int = 90, compress_level: int = 6,
                  square: bool = True) -> bytes:
    """``image`` as a ``size`` x ``size`` texture encoded as "png" or "jpg", encoded once per piece and format.

    The AR packs, the GLB and the USDZ of one piece ask for the same 1024 px texture several times;
    a small cache keyed by the picture's content hands back the bytes made the first time.
    """
    key = (hashlib.blake2b(image.tobytes(), digest_size=16).digest(), image.size, size, fmt, square,
           quality if fmt == "jpg" else compress_level)
    with _TEXTURE_LOCK:
        data = _TEXTURES.get(key)
    if data is None:
        from PIL import Image

        tex = square_texture(image, size) if square else image.resize((size, size), Image.Resampling.LANCZOS)
        data = jpeg_bytes(tex, quality) if fmt == "jpg" else png_bytes(tex, compress_level=compress_level)
        with _TEXTURE_LOCK:
            while len(_TEXTURES) >= _TEXTURE_CACHE_ITEMS:
                _TEXTURES.pop(next(iter(_TEXTURES)))
            _TEXTURES[key] = data
    return data


def png_bytes(image: Any, meta: Mapping[str, Any] | None = None, dpi: float | None = None,
              compress_level: int = 6) -> bytes:
    """PNG with the piece's metadata in the same text chunk the archive uses, and a pHYs DPI."""
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    if meta:
        info.add_itxt(PNG_META_KEY, json.dumps(dict(meta), sort_keys=True, default=str))
    kw: dict[str, Any] = {"pnginfo": info, "compress_level": compress_level, "icc_profile": srgb_icc()}
    if dpi:
        kw["dpi"] = (dpi, dpi)
    buf = io.BytesIO()
    image.save(buf, format="PNG", **kw)
    return buf.getvalue()


def jpeg_bytes(image: Any, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=quality, subsampling=0 if quality >= 90 else 2, icc_profile=srgb_icc())
    return buf.getvalue()


def tiff_bytes(image: Any, meta: Mapping[str, Any] | None, dpi: float) -> bytes:
    """LZW-compressed RGB TIFF with resolution in inches, the sRGB profile and the metadata as its description."""
    from PIL import TiffImagePlugin

    info = TiffImagePlugin.ImageFileDirectory_v2()
    if meta:
        info[270] = json.dumps(dict(meta), sort_keys=True, default=str)  # ImageDescription
    info[305] = "kiosk filters"  # Software
    buf = io.BytesIO()
    image.save(buf, format="TIFF", dpi=(dpi, dpi), compression="tiff_lzw", tiffinfo=info, icc_profile=srgb_icc())
    return buf.getvalue()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_zip(dest: Path, members: Iterable[tuple[str, bytes]]) -> Path:
    """Write a zip atomically; already-compressed members (PNG, JPEG, PDF, zip, GLB) are stored."""
    stored = (".png", ".jpg", ".jpeg", ".pdf", ".zip", ".glb", ".usdz", ".tif", ".tiff")
    with atomic_path(dest) as tmp:
        with zipfile.ZipFile(tmp, "w") as zf:
            for arcname, data in members:
                method = zipfile.ZIP_STORED if arcname.lower().endswith(stored) else zipfile.ZIP_DEFLATED
                info = zipfile.ZipInfo(arcname, date_time=(2020, 1, 1, 0, 0, 0))
                info.compress_type = method
                info.external_attr = 0o644 << 16
                zf.writestr(info, data)
    return dest
