"""Animated pieces for Effect House: a frame sequence (and optionally a sprite sheet) inside its limits.

An optimisation timelapse (Doorways keeps one as GIF or MP4) or a latent walk becomes
``frames/frame_000.png ...`` with README.txt at the top of the zip.  Effect House's
limits are kept: at most 200 frames (evenly thinned when there are more), each image
under 1 MB (PNG, or JPEG when a PNG would be larger) and 8 MB for the whole effect;
each frame gets an equal share of the 8 MB (PNG where it fits, else the best JPEG that
fits) and the frame size steps down (512, 256, 128 px) until every frame fits its share.  ``sprite_sheet``
adds one square sheet of every frame in a grid (at most 1024 px, under 1 MB).
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Mapping

from filters.ar import EFFECT_HOUSE, _encode
from filters.common import piece_summary, sha256, write_zip
from filters.registry import ExportError, register_exporter

MAX_FRAMES = 200
MAX_IMAGE_BYTES = 1024 * 1024 - 1
MAX_TOTAL_BYTES = 8 * 1024 * 1024 - 64 * 1024  # room for the README and manifest
SIZES = (512, 256, 128)
SHEET_MAX = 1024


def read_frames(path: Path) -> tuple[list[Any], float]:
    """Every frame of a GIF / APNG / WebP (Pillow) or MP4 / WebM (PyAV) as RGB images, and the frame rate."""
    from PIL import Image, ImageSequence, UnidentifiedImageError

    if not path.is_file():
        raise ExportError(f"animation {path} does not exist")
    if path.suffix.lower() in (".mp4", ".webm", ".mov", ".mkv"):
        try:
            import av
        except ImportError as exc:
            raise ExportError(f"animation {path}: reading video needs PyAV (pip install av)") from exc
        try:
            with av.open(str(path)) as container:
                stream = container.streams.video[0]
                fps = float(stream.average_rate or 12)
                frames = [f.to_image().convert("RGB") for f in container.decode(stream)]
        except (av.error.FFmpegError, IndexError) as exc:
            raise ExportError(f"animation {path} could not be decoded as video: {exc}") from exc
        return frames, fps
    try:
        with Image.open(path) as im:
            durations = []
            frames = []
            for frame in ImageSequence.Iterator(im):
                frames.append(frame.convert("RGB"))
                durations.append(frame.info.get("duration", 83) or 83)
    except (UnidentifiedImageError, OSError) as exc:
        raise ExportError(f"animation {path} is not an animation Pillow or PyAV can read: {exc}") from exc
    return frames, 1000.0 / (sum(durations) / len(durations))


def thin(frames: list[Any], limit: int) -> list[Any]:
    """At most ``limit`` frames, evenly spaced, first and last kept."""
    if len(frames) <= limit:
        return frames
    idx = sorted({round(i * (len(frames) - 1) / (limit - 1)) for i in range(limit)})
    return [frames[i] for i in idx]


def sprite_sheet(frames: list[Any]) -> tuple[Any, int, int]:
    """All frames in a square grid no larger than SHEET_MAX: (sheet, columns, cell size)."""
    from PIL import Image

    cols = math.ceil(math.sqrt(len(frames)))
    cell = SHEET_MAX // cols
    sheet = Image.new("RGB", (cols * cell, cols * cell))
    for i, f in enumerate(frames):
        r, c = divmod(i, cols)
        side = min(f.size)
        sq = f.crop(((f.size[0] - side) // 2, (f.size[1] - side) // 2, (f.size[0] + side) // 2,
                     (f.size[1] + side) // 2))
        sheet.paste(sq.resize((cell, cell), Image.Resampling.LANCZOS), (c * cell, r * cell))
    return sheet, cols, cell


@register_exporter("effecthouse_sequence")
def export_sequence(image: Any, meta: Mapping[str, Any], stage: Path, *, basename: str,
                    animation: str | os.PathLike | None = None, max_frames: int = MAX_FRAMES,
                    sprite_sheet_too: bool = False) -> list[Path]:
    """``<base>_effecthouse_sequence.zip``: the piece's animation as frames within Effect House's limits."""
    source = animation or meta.get("animation")
    if not source:
        raise ExportError("exporter 'effecthouse_sequence' needs option 'animation' (a GIF or MP4 of the piece, "
                          "e.g. its timelapse) or an 'animation' in the piece metadata")
    if isinstance(max_frames, bool) or not isinstance(max_frames, int) or not 2 <= max_frames <= MAX_FRAMES:
        raise ExportError(f"option 'max_frames' must be an integer from 2 to {MAX_FRAMES}, got {max_frames!r}")
    if not isinstance(sprite_sheet_too, bool):
        raise ExportError(f"option 'sprite_sheet_too' must be true or false, got {sprite_sheet_too!r}")
    frames, fps = read_frames(Path(source))
    if not frames:
        raise ExportError(f"animation {source} has no frames")
    count = len(frames)
    frames = thin(frames, max_frames)
    effective_fps = fps * len(frames) / count
    sheet_member = None
    if sprite_sheet_too:
        sheet, cols, cell = sprite_sheet(frames)
        data, ext = _encode(sheet, sheet.size[0], "auto", MAX_IMAGE_BYTES, EFFECT_HOUSE.tool)
        sheet_member = (f"{basename}_sprites_{cols}x{cols}.{ext}", data, cols, cell)
    budget = MAX_TOTAL_BYTES - (len(sheet_member[1]) if sheet_member else 0)
    encoded = None
    while encoded is None:
        # each frame gets an equal share of the 8 MB: PNG where it fits, else JPEG at the best quality that fits,
        # else the next smaller size; fewer frames only when even 128 px JPEGs do not fit
        share = min(MAX_IMAGE_BYTES, budget // len(frames))
        smallest = min(min(f.size) for f in frames)
        sizes = [s for s in SIZES if s <= smallest] or [SIZES[-1]]  # never enlarge the frames
        probe = frames[:: max(1, len(frames) // 3)][:3]
        fmt = "auto"
        for size in sizes:
            try:  # three frames first: a size that cannot fit is skipped without encoding them all
                probes = [_encode(f, size, "auto", share, EFFECT_HOUSE.tool) for f in probe]
                fmt = "auto" if all(ext == "png" for _, ext in probes) else "jpg"
                encoded = [_encode(f, size, fmt, share, EFFECT_HOUSE.tool) for f in frames]
                break
            except ExportError:
                continue
        if encoded is None:
            if len(frames) <= 2:
                raise ExportError(f"animation {source}: even 2 frames of 128 px do not fit Effect House's 8 MB")
            frames = thin(frames, max(2, len(frames) // 2))
            effective_fps = fps * len(frames) / count
    members: list[tuple[str, bytes]] = []
    listing = []
    for i, (data, ext) in enumerate(encoded):
        name = f"frames/frame_{i:03d}.{ext}"
        members.append((name, data))
        listing.append({"path": name, "bytes": len(data), "format": ext, "sha256": sha256(data)})
    if sheet_member:
        members.append((sheet_member[0], sheet_member[1]))
    manifest = {
        "format": "kiosk-effecthouse-sequence", "version": 1, "piece": piece_summary(meta),
        "source": {"frames": count, "fps": round(fps, 3), "file": Path(source).name},
        "frames": len(encoded), "frame_size": size, "fps": round(effective_fps, 3),
        "total_bytes": sum(len(d) for _, d in members),
        "sprite_sheet": ({"path": sheet_member[0], "columns": sheet_member[2], "rows": sheet_member[2],
                          "cell": sheet_member[3], "frames": len(frames)} if sheet_member else None),
        "limits": {"max_frames": MAX_FRAMES, "max_image_bytes": MAX_IMAGE_BYTES, "max_total_mb": 8},
        "files": listing,
    }
    readme = "\n".join([
        f"Effect House frame sequence for {basename}", "",
        f"{len(encoded)} frames of {size} x {size} px at {effective_fps:.1f} fps "
        f"(from {count} frames at {fps:.1f} fps), {manifest['total_bytes'] / 1e6:.2f} MB in all.",
        "Within Effect House's limits: at most 200 frames, each image under 1 MB, 8 MB for the effect.", "",
        "1. Open the project in Effect House.",
        "2. In the Assets panel choose + Add Asset > Import and pick the frames/ folder (all frames at once).",
        "3. Select the imported frames and create an Image Sequence (Texture > Sequence) from them; set its FPS to "
        f"{effective_fps:.0f}.",
        "4. Use the sequence as the texture of a 2D image or of a plane's material; play it with a Sequence "
        "Controller or the Visual Scripting 'Play Sequence' node.",
    ] + ([f"Sprite sheet: {sheet_member[0]}, {sheet_member[2]} x {sheet_member[2]} cells of {sheet_member[3]} px "
          f"(row by row, {len(frames)} used): for an Animated Sprite / flipbook material."] if sheet_member else [])
        + ["", "manifest.json lists every file with its size and checksum.", ""])
    members.insert(0, ("README.txt", readme.encode("utf-8")))
    members.append(("manifest.json", json.dumps(manifest, indent=2, ensure_ascii=False).encode("utf-8")))
    return [write_zip(stage / f"{basename}_effecthouse_sequence.zip", members)]
