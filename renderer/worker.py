"""The render worker: its own process and the only torch user.

It claims jobs from the store with a lease, renews the lease from a heartbeat
thread while the generator works, publishes progress frames (newest wins),
writes finished pieces, and keeps the queue topped up from the playlist. On
SIGTERM it stops at the next step, leaves any checkpoint on disk and hands the
job back to the queue. A long piece is pre-empted (checkpointed and re-queued)
when a visitor's tap or prompt is waiting.
"""
from __future__ import annotations

import io
import logging
import os
import shutil
import signal
import socket
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from exhibits.config import ConfigError, Exhibit, load_exhibits
from exhibits.playlist import Playlist
from exhibits import wake
from exhibits.show import ShowConfig, is_open
from exhibits.store import Job, Store

log = logging.getLogger(__name__)

FRAME_MAX_SIDE = 768
FRAME_INTERVAL = 0.25  # at most four progress frames a second reach the store
# Job params that are the store's bookkeeping (merch batches), never generator settings.
JOB_BOOKKEEPING = frozenset({"batch", "batch_index", "parent_piece"})


def frame_jpeg(image: Any, max_side: int = FRAME_MAX_SIDE, quality: int = 80) -> bytes:
    """Encode a progress image (PIL) as a small JPEG for the live view."""
    im = image.convert("RGB")
    if max(im.size) > max_side:
        im = im.copy()
        im.thumbnail((max_side, max_side))
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


@dataclass
class WorkerStats:
    done: int = 0
    failed: int = 0
    released: int = 0
    seconds: list[float] = field(default_factory=list)


class Worker:
    def __init__(self, cfg: ShowConfig, store: Store | None = None, *, worker_id: str | None = None,
                 lease: float = 30.0, poll: float = 0.25, top_up: bool = True, batch: str | None = None):
        self.cfg = cfg
        self.store = store or Store(cfg.data_dir)
        self.id = worker_id or f"{socket.gethostname()}:{os.getpid()}"
        self.lease = lease
        self.poll = poll
        self.top_up = top_up
        self.batch = batch
        self.stats = WorkerStats()
        self._stop = threading.Event()
        self._generators: dict[str, Any] = {}
        self._unavailable: dict[str, str] = {}
        self.exhibits: dict[str, Exhibit] = {}
        self.device = None
        self.dtype = None
        self._playlist: Playlist | None = None
        self._last_playlist = float("-inf")
        self._last_disk_warning = float("-inf")

    # -- lifecycle ----------------------------------------------------------
    def stop(self, *_: Any) -> None:
        if not self._stop.is_set():
            log.info("worker %s stopping", self.id)
        self._stop.set()

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)

    def setup(self) -> None:
        """Choose the device once, load the exhibits and find out which generators can run here."""
        import torch

        from renderer import base
        from renderer.device import autocast_dtype, choose_device, describe

        # On a small machine torch's threads fight the display for the cores; leave it one.
        threads = self.cfg.worker_threads or max(1, (os.cpu_count() or 2) - 1)
        torch.set_num_threads(threads)
        self.device = choose_device(self.cfg.device)
        self.dtype = autocast_dtype(self.device)
        self.device_name = describe(self.device)
        names = list(dict.fromkeys([*self.cfg.exhibits, *(x for x in (self.cfg.tap_exhibit, self.cfg.visitor_exhibit) if x)]))
        self.exhibits = load_exhibits(names, self.cfg.exhibit_dirs, known_generators=set(base.names()))
        for name in self.exhibits:
            try:
                self._generator(name)
            except base.GeneratorUnavailable:
                pass  # recorded in self._unavailable with the reason; the other exhibits still run
        available = [n for n in self.cfg.exhibits if n in self.exhibits and n not in self._unavailable]
        self._playlist = Playlist({n: self.exhibits[n] for n in available}) if available else None
        self.store.set_setting("exhibits_available", {n: self._unavailable.get(n, "ok") for n in self.exhibits})
        self._beat("idle")
        log.info("worker %s on %s; exhibits ready: %s; unavailable: %s", self.id, self.device_name,
                 ", ".join(n for n in self.exhibits if n not in self._unavailable) or "none",
                 "; ".join(f"{n} ({why})" for n, why in self._unavailable.items()) or "none")

    def _ctx(self, job: Job | None = None):
        from renderer.base import RenderContext

        work = self.store.work_dir / (f"job-{job.id}" if job else "setup")
        work.mkdir(parents=True, exist_ok=True)
        return RenderContext(device=self.device, dtype=self.dtype, weights_dir=self.cfg.weights, work_dir=work)

    def _generator(self, exhibit: str):
        from renderer.base import GeneratorUnavailable, build

        if exhibit in self._generators:
            return self._generators[exhibit]
        if exhibit in self._unavailable:
            raise GeneratorUnavailable(self._unavailable[exhibit])
        ex = self.exhibits[exhibit]
        try:
            gen = build(ex.generator, ex.settings_dict(), self._ctx())
        except GeneratorUnavailable as exc:
            self._unavailable[exhibit] = str(exc)
            log.warning("exhibit %s cannot run here: %s", exhibit, exc)
            raise
        self._generators[exhibit] = gen
        return gen

    def _beat(self, state: str, message: str = "") -> None:
        if not message and self._unavailable:
            message = "; ".join(f"{n}: {why}" for n, why in self._unavailable.items())
        self.store.worker_beat(self.id, state=state, message=message[:2000], device=getattr(self, "device_name", ""))

    def runnable(self) -> list[str]:
        return [n for n in self.exhibits if n not in self._unavailable]

    def _top_up(self) -> None:
        """Keep the playlist going, paced to the display and never filling the disk."""
        if not self.top_up or self._playlist is None or self.batch:
            return
        now = time.monotonic()
        if now - self._last_playlist < self.cfg.playlist_interval or not is_open(self.cfg):
            return  # paced to the screen; at night (outside opening_hours) the screen is dark: nothing to make
        free_mb = shutil.disk_usage(self.store.root).free // 2**20
        if free_mb < self.cfg.min_free_mb:
            if self.store.prune_playlist_pieces(self.cfg.keep_playlist_pieces // 2) == 0:
                if now - self._last_disk_warning > 600:
                    log.warning("only %d MB free in %s: the playlist is paused (visitors' prompts still run)",
                                free_mb, self.store.root)
                    self._last_disk_warning = now
                return
        while self.store.count_queued("playlist") < self.cfg.queue_depth:
            spec = self._playlist.next()
            self.store.submit(spec.exhibit, prompts=spec.prompts, prompt_text=spec.prompt_text, seed=spec.seed,
                              params=spec.params, source="playlist")
            self._last_playlist = now
        self.store.prune_playlist_pieces(self.cfg.keep_playlist_pieces)

    def run(self, *, max_jobs: int | None = None, idle_exit: float | None = None) -> WorkerStats:
        """Claim and render until stopped (or ``max_jobs`` done, or idle for ``idle_exit`` seconds)."""
        if self.device is None:
            self.setup()
        idle_since = time.monotonic()
        last_beat = 0.0
        nudge = wake.Listener.open(self.store.root, "worker")  # the display says when a tap is queued
        try:
            while not self._stop.is_set():
                if max_jobs is not None and self.stats.done + self.stats.failed >= max_jobs:
                    break
                self._top_up()
                job = self.store.claim(self.id, lease=self.lease, exhibits=self.runnable(), batch=self.batch)
                if job is None:
                    if time.monotonic() - last_beat > 5:
                        self._beat("idle")
                        last_beat = time.monotonic()
                    if idle_exit is not None and time.monotonic() - idle_since > idle_exit:
                        break
                    nudge.wait(self.poll) if nudge is not None else self._stop.wait(self.poll)
                    continue
                self.process(job)
                idle_since = time.monotonic()
        finally:
            if nudge is not None:
                nudge.close()
            self.store.worker_gone(self.id)
        return self.stats

    # -- one job ------------------------------------------------------------
    def process(self, job: Job) -> None:
        from renderer.base import GeneratorUnavailable, RenderCancelled, RenderRequest

        ex = self.exhibits[job.exhibit]
        self._beat("rendering", f"job {job.id}: {ex.title}")
        ctx = self._ctx(job)
        cancelled = threading.Event()
        last_frame = [0.0]

        def heartbeat() -> None:
            while not cancelled.wait(self.lease / 3):
                if not self.store.heartbeat(job.id, self.id, lease=self.lease):
                    log.warning("job %d was taken away (cancelled by staff?)", job.id)
                    cancelled.set()
                self._beat("rendering", f"job {job.id}: {ex.title}")

        def progress(info: dict) -> None:
            now = time.monotonic()
            image = info.get("image")
            step, total = int(info.get("step", 0)), int(info.get("total", 0))
            final = total and step >= total
            if image is not None and (now - last_frame[0] >= FRAME_INTERVAL or final):
                last_frame[0] = now
                if not self.store.publish_frame(job.id, self.id, frame_jpeg(image), step=step, total=total,
                                                lease=self.lease):
                    cancelled.set()
                wake.notify(self.store.root, "frame")  # the display shows it now, not at its next poll
            elif not self.store.heartbeat(job.id, self.id, lease=self.lease, step=step, total=total):
                cancelled.set()

        def should_stop() -> bool:
            if self._stop.is_set() or cancelled.is_set():
                return True
            # Pre-empt a long piece when a tap or a visitor is waiting; its checkpoint lets it resume later.
            # Only jobs this worker can make count: one it cannot would pre-empt the piece forever.
            return not ex.instant and self.store.higher_priority_waiting(job.priority, self.runnable())

        ctx.progress, ctx.should_stop = progress, should_stop
        job_params = dict(job.params)
        if job_params.get("init_image") and not Path(job_params["init_image"]).is_absolute():
            job_params["init_image"] = str(self.store.path(job_params["init_image"]))  # kept relative to the archive
        params = {**ex.settings_dict(), **{k: v for k, v in job_params.items() if k not in JOB_BOOKKEEPING}}
        req = RenderRequest(job_id=job.id, exhibit=job.exhibit, generator=ex.generator, prompts=job.prompts,
                            seed=job.seed, width=int(params.pop("width", ex.width)),
                            height=int(params.pop("height", ex.height)), params=params,
                            init_image=Path(params["init_image"]) if params.get("init_image") else None)
        beat = threading.Thread(target=heartbeat, name=f"lease-{job.id}", daemon=True)
        beat.start()
        t0 = time.monotonic()
        try:
            gen = self._generator(job.exhibit)
            result = gen.render(req, ctx)
        except RenderCancelled as exc:
            cancelled.set()
            self._after_cancel(job, str(exc) or "stopped")
            return
        except GeneratorUnavailable as exc:
            cancelled.set()
            self.store.fail(job.id, self.id, f"{ex.title} cannot run on this machine: {exc}")
            self.stats.failed += 1
            return
        except Exception as exc:  # a render bug must not kill the show: record it, retry, keep going
            cancelled.set()
            log.error("job %d failed:\n%s", job.id, traceback.format_exc())
            self.store.fail(job.id, self.id, f"{type(exc).__name__}: {exc}", retry=True)
            self.stats.failed += 1
            return
        finally:
            cancelled.set()
            beat.join(timeout=5)
        seconds = time.monotonic() - t0
        meta = dict(result.meta)
        meta.setdefault("generator", ex.generator)
        meta.update({
            "series": ex.series, "title": ex.title, "render_seconds": round(seconds, 3),
            "device": self.device_name, "width": result.image.width, "height": result.image.height,
            "params": meta.get("params", params), "config": {"exhibit": ex.name, "source": ex.source,
                                                              "settings": ex.settings_dict(),
                                                              "request": {**params, **job.params}},
        })
        meta.setdefault("label", getattr(self._generators.get(job.exhibit), "label", ""))
        if "sigma" not in meta and "sigma" in params:
            meta["sigma"] = params["sigma"]
        try:
            self.store.add_piece(job, self.id, result.image, meta, extra_files=result.extra_files)
        except Exception:
            log.error("job %d: writing the piece failed:\n%s", job.id, traceback.format_exc())
            self.store.fail(job.id, self.id, "writing the piece failed", retry=True)
            self.stats.failed += 1
            return
        wake.notify(self.store.root, "piece")
        shutil.rmtree(ctx.work_dir, ignore_errors=True)
        self.stats.done += 1
        self.stats.seconds.append(seconds)
        self._beat("idle")

    def _after_cancel(self, job: Job, why: str) -> None:
        current = self.store.get_job(job.id)
        if current is not None and current.status == "running" and current.worker == self.id:
            self.store.release(job.id, self.id, why)
            self.stats.released += 1


def main(cfg: ShowConfig, *, once: bool = False, max_jobs: int | None = None) -> int:
    """Entry point of ``python -m kiosk worker``."""
    worker = Worker(cfg)
    worker.install_signal_handlers()
    try:
        worker.setup()
    except ConfigError as exc:
        log.error("%s", exc)
        return 2
    worker.run(max_jobs=1 if once else max_jobs)
    log.info("worker %s stopped: %d done, %d failed, %d handed back", worker.id, worker.stats.done,
             worker.stats.failed, worker.stats.released)
    return 0
