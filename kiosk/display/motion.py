"""Moving pieces on the kiosk: which of a piece's videos plays, and the thread that decodes it.

A piece may carry moving versions (``Piece.extra``: ``animation`` — a StyleGAN latent loop walk —,
``interpolation``, ``timelapse`` — the optimisation, or a story/zoom run —, each as MP4 and/or GIF).
The show's ``play_motion`` picks one (:func:`motion_file`). A :class:`Decoder` thread opens it
with PyAV, decodes, scales every frame to the still's size on screen in the screen's own pixel
format (FFmpeg's swscale) and hands the frames over through a small bounded queue, looping for as
long as the piece is up. The frame loop only takes the newest due frame and blits it
(:class:`Playback`); it never opens, decodes or scales. A video that cannot be opened or decoded
ends the playback and the still stays on screen.

Memory: at most ``QUEUE_FRAMES`` frames wait in the queue; a loop whose frames together fit in
``CACHE_BYTES`` is kept after its first pass and replayed without decoding again, a longer one is
streamed from the file on every pass.
"""
from __future__ import annotations

import logging
import queue
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from exhibits.show import PLAY_MOTION

log = logging.getLogger(__name__)

# extra-file keys in the order each ``play_motion`` prefers them (MP4 before GIF)
_ORDER = {
    "loop": ("animation", "animation_gif", "interpolation", "interpolation_gif", "timelapse", "timelapse_gif"),
    "timelapse": ("timelapse", "timelapse_gif", "animation", "animation_gif", "interpolation", "interpolation_gif"),
    "off": (),
}
_SUFFIXES = (".mp4", ".gif")
QUEUE_FRAMES = 3
CACHE_BYTES = 96 * 1024 * 1024
DEFAULT_FPS = 12.0
MAX_LATE_SECONDS = 0.25  # a frame loop held up longer than this slips the play clock instead of skipping frames


def motion_file(extra: dict | None, play_motion: str) -> str | None:
    """The archive-relative path of the moving version ``play_motion`` wants shown, or None.

    ``loop`` prefers the loop walk, then a latent interpolation, then the timelapse (which for a story
    or zoom run is the story itself); ``timelapse`` prefers how it was made; ``off`` shows stills only."""
    if play_motion not in _ORDER:
        raise ValueError(f"play_motion {play_motion!r}; allowed: {', '.join(PLAY_MOTION)}")
    for key in _ORDER[play_motion]:
        rel = (extra or {}).get(key)
        if isinstance(rel, str) and Path(rel).suffix.lower() in _SUFFIXES:
            return rel
    return None


def pixel_format(bitsize: int, masks: tuple[int, ...]) -> tuple[str, str]:
    """(FFmpeg pixel format, pygame buffer format) that match a surface's layout byte for byte, so the
    frame loop copies a frame instead of converting it; RGB24 for any other layout."""
    if bitsize == 32 and tuple(masks[:3]) == (0xFF0000, 0xFF00, 0xFF):
        return "bgr0", "native"
    if bitsize == 32 and tuple(masks[:3]) == (0xFF, 0xFF00, 0xFF0000):
        return "rgb0", "native"
    return "rgb24", "RGB"


@dataclass(frozen=True)
class Frame:
    at: float  # seconds since the playback began, loops included
    data: bytes  # pixels in the Decoder's ``pix_fmt``, rows packed
    size: tuple[int, int]
    index: int  # the frame's place in its loop (0: the first)
    loop: int  # how many times the video played through before this frame


@dataclass(frozen=True)
class Failed:
    error: str


class Decoder(threading.Thread):
    """Decodes ``path`` in a loop into ``out`` (a bounded queue of :class:`Frame`, then :class:`Failed`
    if the video breaks). ``stop()`` ends it; it holds no more than the queue and the capped cache."""

    def __init__(self, path: Path, size: tuple[int, int], pix_fmt: str = "rgb24", *,
                 queue_frames: int = QUEUE_FRAMES, cache_bytes: int = CACHE_BYTES,
                 on_frame: Callable[[], None] | None = None):
        super().__init__(name="kiosk-display-motion", daemon=True)
        self.path = Path(path)
        self.size = (max(2, int(size[0])), max(2, int(size[1])))
        self.pix_fmt = pix_fmt
        self.out: queue.Queue[Frame | Failed] = queue.Queue(maxsize=queue_frames)
        self.cache_bytes = cache_bytes
        self.on_frame = on_frame
        self._stop_event = threading.Event()
        self.decoded = 0  # frames decoded and scaled (a cached loop stops counting)
        self.cached = False  # the whole loop is in memory
        self.fps = DEFAULT_FPS

    def stop(self) -> None:
        self._stop_event.set()

    @property
    def stopped(self) -> bool:
        return self._stop_event.is_set()

    def run(self) -> None:
        try:
            self._play()
        except Exception as exc:  # noqa: BLE001 - a broken video ends the playback, never the display
            log.warning("moving piece %s cannot be played (%s: %s); showing the still", self.path,
                        type(exc).__name__, exc)
            self._put(Failed(f"{type(exc).__name__}: {exc}"))

    def _put(self, item: Frame | Failed) -> bool:
        while not self._stop_event.is_set():
            try:
                self.out.put(item, timeout=0.1)
            except queue.Full:
                continue
            if self.on_frame is not None and self.out.qsize() == 1:
                self.on_frame()  # the frame loop may be waiting for this one
            return True
        return False

    def _play(self) -> None:
        offset = 0.0
        loop = 0
        cache: list[tuple[float, bytes]] | None = []
        length = 0.0
        while not self._stop_event.is_set():
            if cache is not None and loop > 0:  # the whole loop is in memory: replay it
                self.cached = True
                for i, (t, data) in enumerate(cache):
                    if not self._put(Frame(offset + t, data, self.size, i, loop)):
                        return
                offset += length
                loop += 1
                continue
            count, length, cache = self._pass(offset, loop, cache)
            if count == 0:
                raise ValueError("no frames")
            offset += length
            loop += 1

    def _pass(self, offset: float, loop: int, cache: list | None) -> tuple[int, float, list | None]:
        """Decode the file once from its start; returns (frames, seconds the loop lasts, the cache or None)."""
        import av

        w, h = self.size
        held = 0
        count = 0
        first: float | None = None
        last = 0.0
        step = 1.0 / self.fps
        with av.open(str(self.path), mode="r") as container:
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.guessed_rate
            if rate:
                self.fps = float(rate)
                step = 1.0 / self.fps
            for frame in container.decode(stream):
                if self._stop_event.is_set():
                    return count, 0.0, None
                t = frame.time if frame.time is not None else count * step
                first = t if first is None else first
                rel = max(0.0, t - first)
                if count and rel <= last:  # a frame without a usable timestamp
                    rel = last + step
                if frame.duration and frame.time_base:
                    step = float(frame.duration * frame.time_base) or step
                last = rel
                data = bytes(frame.reformat(width=w, height=h, format=self.pix_fmt,
                                            interpolation="BILINEAR").planes[0])
                data = _packed(data, w, h, self.pix_fmt)
                self.decoded += 1
                if cache is not None and loop == 0:
                    held += len(data)
                    if held <= self.cache_bytes:
                        cache.append((rel, data))
                    else:
                        cache = None  # too long to keep: stream it on every pass
                if not self._put(Frame(offset + rel, data, (w, h), count, loop)):
                    return count, 0.0, None
                count += 1
        return count, last + step, cache


def _packed(data: bytes, w: int, h: int, pix_fmt: str) -> bytes:
    """Drop FFmpeg's row padding (its lines are aligned; pygame's buffers here are packed)."""
    bpp = 3 if pix_fmt == "rgb24" else 4
    row = w * bpp
    if len(data) == row * h:
        return data
    stride = len(data) // h
    return b"".join(data[y * stride:y * stride + row] for y in range(h))


class Playback:
    """The frame loop's side: which decoded frame is due now. No I/O, no decoding, no scaling."""

    def __init__(self, decoder: Decoder, started: float):
        self.decoder = decoder
        self.started = started
        self.next: Frame | None = None
        self.failed: str | None = None
        self.shown = 0  # frames put on screen
        self.skipped = 0  # frames that were due together with a newer one (never shown)
        self.current: Frame | None = None

    def due(self, now: float) -> Frame | None:
        """The newest frame due at ``now`` that is not on screen yet (older due frames are skipped)."""
        newest = None
        while True:
            if self.next is None:
                try:
                    item = self.decoder.out.get_nowait()
                except queue.Empty:
                    break
                if isinstance(item, Failed):
                    self.failed = item.error
                    return None
                self.next = item
            if self.started + self.next.at > now:
                break
            if newest is not None:
                self.skipped += 1
            newest, self.next = self.next, None
        if newest is not None:
            late = now - (self.started + newest.at)
            if late > MAX_LATE_SECONDS:
                self.started += late
            self.shown += 1
            self.current = newest
        return newest

    def wait_seconds(self, now: float) -> float | None:
        """Seconds until the next frame is due (None: no frame is decoded yet)."""
        if self.next is None:
            return None
        return max(0.0, self.started + self.next.at - now)

    def stop(self) -> None:
        self.decoder.stop()
