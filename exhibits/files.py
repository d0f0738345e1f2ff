"""Atomic file writes and PNG metadata: nothing half-written ever lands in the archive."""
from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping

# PNG text chunk keys. "parameters" holds the full JSON metadata; the others are
# human-readable copies that image viewers show.
PNG_META_KEY = "kiosk:meta"


@contextmanager
def atomic_path(dest: str | os.PathLike, suffix: str | None = None, *, durable: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside ``dest``; on success it is fsynced and renamed onto ``dest``.

    ``durable=False`` skips the fsync: running readers still see the old file or the whole new one, but after
    a power cut ``dest`` may be empty or truncated.  Only for throwaway files whose readers skip a broken one
    (live progress frames, where the fsync is the slowest step of publishing).

    On any exception the temporary file is removed and ``dest`` is untouched.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=suffix or dest.suffix or ".tmp", dir=dest.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if durable:
            with open(tmp_path, "rb+") as fh:
                os.fsync(fh.fileno())
        os.chmod(tmp_path, 0o644)  # mkstemp makes 0600; the web app may run as another user
        os.replace(tmp_path, dest)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks (checkpoints are gigabytes)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def atomic_write_bytes(dest: str | os.PathLike, data: bytes, *, durable: bool = True) -> Path:
    with atomic_path(dest, durable=durable) as tmp:
        tmp.write_bytes(data)
    return Path(dest)


def atomic_write_text(dest: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(dest, text.encode("utf-8"))


def png_bytes(image: Any, meta: Mapping[str, Any] | None = None) -> bytes:
    """Encode a PIL image as PNG with ``meta`` in text chunks (full JSON plus readable keys)."""
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    if meta:
        info.add_itxt(PNG_META_KEY, json.dumps(meta, sort_keys=True, default=str))
        for key in ("title", "prompt", "generator", "seed", "sigma", "exhibit", "label"):
            if meta.get(key) is not None:
                info.add_itxt(key, str(meta[key]))
    buf = io.BytesIO()
    image.save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()


def write_png(dest: str | os.PathLike, image: Any, meta: Mapping[str, Any] | None = None) -> Path:
    return atomic_write_bytes(dest, png_bytes(image, meta))


def read_png_meta(path: str | os.PathLike) -> dict:
    """The JSON metadata written by :func:`write_png` (empty dict if there is none)."""
    from PIL import Image

    with Image.open(path) as im:
        raw = im.info.get(PNG_META_KEY) or getattr(im, "text", {}).get(PNG_META_KEY)
    return json.loads(raw) if raw else {}
