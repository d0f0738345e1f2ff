"""Moving pieces on disk: H.264 MP4 through PyAV (FFmpeg's libx264) and looping GIFs through Pillow.

Frames are PIL images of one size; MP4 needs even sides (yuv420p), so odd sizes
lose their last row or column.  Files are written through ``atomic_path``: a
half-written video never appears under its final name.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Iterable, Sequence

from exhibits.files import atomic_path

log = logging.getLogger(__name__)

VIDEO_FORMATS = ("mp4", "gif", "both")


def write_mp4(frames: Iterable[Any], dest: Path, fps: float = 12, crf: int = 20) -> Path:
    """Encode RGB frames as H.264 (yuv420p, ``crf``) in an MP4 that browsers and phones play."""
    import av
    import numpy as np

    frames = iter(frames)
    first = next(frames, None)
    if first is None:
        raise ValueError(f"{dest}: no frames to encode")
    w, h = first.size
    w2, h2 = max(2, w - w % 2), max(2, h - h % 2)
    with atomic_path(dest, suffix=".mp4") as tmp:
        with av.open(str(tmp), mode="w", format="mp4") as container:
            stream = container.add_stream("libx264", rate=round(fps))
            stream.width, stream.height, stream.pix_fmt = w2, h2, "yuv420p"
            stream.options = {"crf": str(crf), "preset": "medium"}
            for im in (first, *frames):
                arr = np.asarray(im.convert("RGB"))
                if arr.shape[:2] != (h2, w2):
                    arr = np.ascontiguousarray(arr[:h2, :w2])
                for packet in stream.encode(av.VideoFrame.from_ndarray(arr, format="rgb24")):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
    return dest


def write_gif(frames: Sequence[Any], dest: Path, fps: float = 12, max_side: int | None = None) -> Path:
    """A looping GIF (Pillow's palette quantisation per frame)."""
    frames = list(frames)
    if not frames:
        raise ValueError(f"{dest}: no frames to write")
    if max_side and max(frames[0].size) > max_side:
        k = max_side / max(frames[0].size)
        size = (max(1, round(frames[0].width * k)), max(1, round(frames[0].height * k)))
        frames = [f.resize(size) for f in frames]
    frames = [f.convert("RGB") for f in frames]
    with atomic_path(dest, suffix=".gif") as tmp:
        frames[0].save(tmp, format="GIF", save_all=True, append_images=frames[1:],
                       duration=max(20, int(round(1000 / fps))), loop=0)
    return dest


def write_video(frames: Sequence[Any], out_dir: Path, stem: str, fmt: str, fps: float = 12) -> dict[str, Path]:
    """``fmt`` mp4 | gif | both -> {stem: first file, stem_gif: the GIF when both}."""
    if fmt not in VIDEO_FORMATS:
        raise ValueError(f"video format {fmt!r}; allowed: {', '.join(VIDEO_FORMATS)}")
    if not frames:
        return {}
    out: dict[str, Path] = {}
    if fmt in ("mp4", "both"):
        out[stem] = write_mp4(frames, Path(out_dir) / f"{stem}.mp4", fps)
    if fmt in ("gif", "both"):
        out[f"{stem}_gif" if stem in out else stem] = write_gif(frames, Path(out_dir) / f"{stem}.gif", fps)
    return out
