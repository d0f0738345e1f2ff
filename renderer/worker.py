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
import sqlite3
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from exhibits import service
from exhibits.config import ConfigError, Exhibit, load_exhibits
from exhibits.playlist import Playlist
from exhibits import wake
from exhibits.show import ShowConfig, is_open
from exhibits.store import (Job, Store, StoreDamagedError, StoreError, StoreFault, StoreUnavailableError,
                            classify_fault, is_disk_full)

log = logging.getLogger(__name__)

FRAME_MAX_SIDE = 768
FRAME_INTERVAL = 0.25  # at most four progress frames a second reach the store
# Job params that are the store's bookkeeping (merch batches), never generator settings.
JOB_BOOKKEEPING = frozenset({"batch", "batch_index", "parent_piece"})
# Waits after a store or disk fault: first, then doubling up to the most (seconds).
BACKOFF_FIRST, BACKOFF_MAX = 0.5, 60.0
DISK_PROBE_BYTES = 1 << 20  # work resumes after a full disk once this much can be written again


class DiskFull(Exception):
    """Raised inside the worker to pause work until the disk has room again."""


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
                 lease: float | None = None, poll: float = 0.25, top_up: bool = True, batch: str | None = None):
        self.cfg = cfg
        self.store = store or Store(cfg.data_dir)
        self.id = worker_id or f"{socket.gethostname()}:{os.getpid()}"
        self.lease = lease if lease is not None else cfg.worker_lease
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
        self.backoff_first, self.backoff_max = BACKOFF_FIRST, BACKOFF_MAX
        self.paused_for_disk = 0  # how many times work paused for a full disk (status, tests)
        self._held_for: str | None = None  # the exhibit whose freed memory the process holds (cpu_memory reuse)

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
        from renderer.device import choose_device, describe, render_dtype

        # On a small machine torch's threads fight the display for the cores; leave it one.
        threads = self.cfg.worker_threads or max(1, (os.cpu_count() or 2) - 1)
        torch.set_num_threads(threads)
        self.device = choose_device(self.cfg.device)
        self.dtype = render_dtype(self.device, self.cfg.precision)
        # e.g. "cpu (1 threads), float32": on the staff page, in the logs and in every piece's metadata
        self.device_name = f"{describe(self.device)}, {str(self.dtype).removeprefix('torch.')}"
        names = list(dict.fromkeys([*self.cfg.exhibits, *(x for x in (self.cfg.tap_exhibit, self.cfg.visitor_exhibit) if x)]))
        self.exhibits = load_exhibits(names, self.cfg.exhibit_dirs, known_generators=set(base.names()))
        for name in self.exhibits:
            service.watchdog()
            try:
                self._generator(name)
            except base.GeneratorUnavailable:
                pass  # recorded in self._unavailable with the reason; the other exhibits still run
        available = [n for n in self.cfg.exhibits if n in self.exhibits and n not in self._unavailable]
        self._playlist = Playlist({n: self.exhibits[n] for n in available}) if available else None
        self._patiently("exhibit list", self.store.set_setting, "exhibits_available",
                        {n: self._unavailable.get(n, "ok") for n in self.exhibits})
        self._quietly(self._beat, "idle")
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
        except Exception as exc:  # a loader bug or an unexpected file: only this exhibit is off
            self._unavailable[exhibit] = f"{type(exc).__name__}: {exc}"
            log.error("exhibit %s failed to load and is off until the worker restarts:\n%s", exhibit,
                      traceback.format_exc())
            raise GeneratorUnavailable(self._unavailable[exhibit]) from exc
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

    # -- faults -------------------------------------------------------------
    def _wait(self, seconds: float) -> None:
        """Sleep (pinging systemd's watchdog: waiting out a fault is not a hang) unless stopped."""
        end = time.monotonic() + seconds
        while not self._stop.is_set() and (left := end - time.monotonic()) > 0:
            service.watchdog()
            self._stop.wait(min(left, 1.0))

    def _disk_has_room(self) -> bool:
        probe = self.store.work_dir / ".space-probe"
        try:
            with open(probe, "wb") as fh:
                fh.write(b"\0" * DISK_PROBE_BYTES)
                fh.flush()
                os.fsync(fh.fileno())
            return True
        except OSError as exc:
            if is_disk_full(exc):
                return False
            raise
        finally:
            probe.unlink(missing_ok=True)

    def _pause_for_disk(self, why: str) -> None:
        """Stop taking work until the disk has room again; nothing is failed or counted meanwhile."""
        self.paused_for_disk += 1
        log.warning("the disk under %s is full (%s): work is paused until space is freed", self.store.root, why)
        service.status(f"paused: the disk under {self.store.root} is full")
        delay = self.backoff_first
        while not self._stop.is_set() and not self._disk_has_room():
            self._wait(delay)
            delay = min(delay * 2, self.backoff_max)
        if not self._stop.is_set():
            log.info("the disk has room again: work resumes")
            service.status(f"worker {self.id}: working")

    def _on_fault(self, exc: BaseException, delay: float) -> None:
        """Wait out a store or disk fault met in the main loop; re-raise anything else."""
        fault = classify_fault(exc, self.store.db_path)
        if fault is None or not isinstance(fault, StoreFault):
            raise exc
        if isinstance(fault, StoreUnavailableError) and fault.disk_full:
            self._pause_for_disk(str(exc))
            return
        (log.error if isinstance(fault, StoreDamagedError) else log.warning)("%s (next try in %.0f s)", fault, delay)
        service.status(str(fault)[:200])
        self._wait(delay)

    def _patiently(self, what: str, fn: Any, *args: Any, **kw: Any) -> Any:
        """Run a store write until it goes through: a locked database or a full disk is waited out with backoff.
        Once the worker is stopping it keeps trying for at most 10 s more. Returns None if it never went through."""
        delay = self.backoff_first
        give_up = None
        while True:
            try:
                return fn(*args, **kw)
            except (StoreFault, sqlite3.Error, OSError) as exc:
                fault = classify_fault(exc, self.store.db_path)
                if not isinstance(fault, StoreUnavailableError):
                    raise
                if self._stop.is_set():
                    give_up = give_up or time.monotonic() + 10
                    if time.monotonic() > give_up:
                        log.error("%s did not go through before stopping: %s", what, fault)
                        return None
                    time.sleep(min(delay, 1.0))
                else:
                    log.warning("%s waits: %s (next try in %.1f s)", what, fault, delay)
                    self._wait(delay)
                delay = min(delay * 2, self.backoff_max)

    def _hand_back_memory(self, why: str) -> None:
        """Where the worker keeps freed memory for the next step (``renderer.cpu_memory``), hand it back to the
        system when it goes idle or moves to another exhibit, whose blocks have other sizes."""
        from renderer import cpu_memory

        if self._held_for is None or cpu_memory.mode() != "reuse":
            return
        before = cpu_memory.resident_bytes()
        cpu_memory.release_freed_memory()
        log.info("freed memory handed back (%s): resident %d -> %d MB", why, before >> 20,
                 cpu_memory.resident_bytes() >> 20)
        self._held_for = None

    def _quietly(self, fn: Any, *args: Any, **kw: Any) -> Any:
        """A store call whose failure must not stop the work (heartbeats, status beats): log it and go on."""
        try:
            return fn(*args, **kw)
        except (StoreFault, sqlite3.Error, OSError) as exc:
            log.warning("store write skipped: %s", classify_fault(exc, self.store.db_path) or exc)
            return None

    def run(self, *, max_jobs: int | None = None, idle_exit: float | None = None) -> WorkerStats:
        """Claim and render until stopped (or ``max_jobs`` done, or idle for ``idle_exit`` seconds)."""
        if self.device is None:
            self.setup()
        service.ready(f"worker {self.id} on {self.device_name}")
        idle_since = time.monotonic()
        last_beat = 0.0
        nudge = wake.Listener.open(self.store.root, "worker")  # the display says when a tap is queued
        delay = self.backoff_first
        try:
            while not self._stop.is_set():
                service.watchdog()
                if max_jobs is not None and self.stats.done + self.stats.failed >= max_jobs:
                    break
                try:
                    self._top_up()
                    job = self.store.claim(self.id, lease=self.lease, exhibits=self.runnable(), batch=self.batch)
                    if job is None and time.monotonic() - last_beat > 5:
                        self._beat("idle")
                        last_beat = time.monotonic()
                except (StoreFault, sqlite3.Error, OSError) as exc:
                    self._on_fault(exc, delay)
                    delay = min(delay * 2, self.backoff_max)
                    continue
                delay = self.backoff_first
                if job is None:
                    self._hand_back_memory("idle")
                    if idle_exit is not None and time.monotonic() - idle_since > idle_exit:
                        break
                    nudge.wait(self.poll) if nudge is not None else self._stop.wait(self.poll)
                    continue
                self.process_through_full_disks(job)
                idle_since = time.monotonic()
        finally:
            if nudge is not None:
                nudge.close()
            self._quietly(self.store.worker_gone, self.id)
            service.stopping()
        return self.stats

    def process_through_full_disks(self, job: Job) -> None:
        """Process ``job``; when the disk fills up meanwhile, keep it (its checkpoint stays on disk, nothing is
        counted against it), wait until there is room and carry on with it."""
        while True:
            try:
                self.process(job)
                return
            except DiskFull as exc:
                self._pause_for_disk(str(exc))
            if self._stop.is_set():
                self._after_cancel(job, "stopped while the disk was full")
                return
            if not self._quietly(self.store.heartbeat, job.id, self.id, lease=self.lease):
                log.warning("job %d was taken away while the disk was full", job.id)
                return
            log.info("job %d carries on after the full disk", job.id)

    # -- one job ------------------------------------------------------------
    def process(self, job: Job) -> None:
        """Render one claimed job and write its piece. A full disk raises DiskFull with the job still held (no
        attempt used); a locked or full store is waited out; only a render error uses an attempt."""
        from renderer.base import GeneratorUnavailable, RenderCancelled, RenderRequest

        ex = self.exhibits[job.exhibit]
        self._quietly(self._beat, "rendering", f"job {job.id}: {ex.title}")
        ctx = self._ctx(job)
        cancelled = threading.Event()
        last_frame = [0.0]

        def heartbeat() -> None:
            while not cancelled.wait(self.lease / 3):
                if self._quietly(self.store.heartbeat, job.id, self.id, lease=self.lease) is False:
                    log.warning("job %d was taken away (cancelled by staff?)", job.id)
                    cancelled.set()
                self._quietly(self._beat, "rendering", f"job {job.id}: {ex.title}")

        def progress(info: dict) -> None:
            service.watchdog()  # a step finished: the render is not hung
            now = time.monotonic()
            image = info.get("image")
            step, total = int(info.get("step", 0)), int(info.get("total", 0))
            final = total and step >= total
            if image is not None and (now - last_frame[0] >= FRAME_INTERVAL or final):
                last_frame[0] = now
                held = self._quietly(self.store.publish_frame, job.id, self.id, frame_jpeg(image), step=step,
                                     total=total, lease=self.lease)
                wake.notify(self.store.root, "frame")  # the display shows it now, not at its next poll
            else:
                held = self._quietly(self.store.heartbeat, job.id, self.id, lease=self.lease, step=step, total=total)
            if held is False:
                cancelled.set()

        def should_stop() -> bool:
            if self._stop.is_set() or cancelled.is_set():
                return True
            # Pre-empt a long piece when a tap or a visitor is waiting; its checkpoint lets it resume later.
            # Only jobs this worker can make count: one it cannot would pre-empt the piece forever.
            return not ex.instant and bool(self._quietly(self.store.higher_priority_waiting, job.priority,
                                                         self.runnable()))

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
        if self._held_for not in (None, job.exhibit):
            self._hand_back_memory(f"before a piece of {job.exhibit}")
        self._held_for = job.exhibit
        try:
            gen = self._generator(job.exhibit)
            result = gen.render(req, ctx)
        except RenderCancelled as exc:
            cancelled.set()
            self._after_cancel(job, str(exc) or "stopped")
            return
        except GeneratorUnavailable as exc:
            cancelled.set()
            self._patiently(f"job {job.id} failure", self.store.fail, job.id, self.id,
                            f"{ex.title} cannot run on this machine: {exc}")
            self.stats.failed += 1
            return
        except Exception as exc:  # a render bug must not kill the show: record it, retry, keep going
            cancelled.set()
            if is_disk_full(exc) or isinstance(classify_fault(exc, self.store.db_path), StoreUnavailableError):
                # Not the job's fault: the worker keeps it (its checkpoint stays), waits for space, carries on.
                log.warning("job %d stopped by a full disk (%s); it waits for space", job.id, exc)
                raise DiskFull(str(exc)) from exc
            log.error("job %d failed:\n%s", job.id, traceback.format_exc())
            self._patiently(f"job {job.id} failure", self.store.fail, job.id, self.id,
                            f"{type(exc).__name__}: {exc}", retry=True)
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
        if not self._write_piece(job, result, meta):
            return
        wake.notify(self.store.root, "piece")
        shutil.rmtree(ctx.work_dir, ignore_errors=True)
        self.stats.done += 1
        self.stats.seconds.append(seconds)
        self._quietly(self._beat, "idle")

    def _write_piece(self, job: Job, result: Any, meta: dict) -> bool:
        """Write the finished piece. On a full disk or a busy store the picture waits in memory (the lease kept)
        until it can be written: a finished piece is never thrown away for lack of space."""
        delay = self.backoff_first
        while True:
            try:
                self.store.add_piece(job, self.id, result.image, meta, extra_files=result.extra_files)
                return True
            except Exception as exc:
                fault = classify_fault(exc, self.store.db_path)
                if isinstance(fault, StoreUnavailableError):
                    if self._stop.is_set():
                        self._after_cancel(job, "stopped while waiting for disk space")
                        return False
                    log.warning("job %d: the finished piece waits to be written: %s (next try in %.1f s)",
                                job.id, fault, delay)
                    self.paused_for_disk += int(fault.disk_full and delay == self.backoff_first)
                    service.status(f"job {job.id}: waiting for disk space to write the piece")
                    self._wait(delay)
                    delay = min(delay * 2, self.backoff_max)
                    if self._quietly(self.store.heartbeat, job.id, self.id, lease=self.lease) is False:
                        log.warning("job %d was taken away while its piece waited to be written", job.id)
                        return False
                    continue
                if isinstance(exc, StoreError) and not isinstance(exc, StoreFault):
                    log.warning("job %d: %s", job.id, exc)  # taken away (cancelled by staff, lease expired)
                    return False
                log.error("job %d: writing the piece failed:\n%s", job.id, traceback.format_exc())
                self._patiently(f"job {job.id} failure", self.store.fail, job.id, self.id,
                                "writing the piece failed", retry=True)
                self.stats.failed += 1
                return False

    def _after_cancel(self, job: Job, why: str) -> None:
        current = self._patiently(f"job {job.id} hand-back", self.store.get_job, job.id)
        if current is not None and current.status == "running" and current.worker == self.id:
            self._patiently(f"job {job.id} hand-back", self.store.release, job.id, self.id, why)
            self.stats.released += 1


def open_store_patiently(cfg: ShowConfig, stop: threading.Event) -> Store | None:
    """Open the archive; while it is damaged, missing or locked, say why (the file and the fix) and try again
    with backoff instead of exiting, so systemd does not give up on a restart loop while staff restore it."""
    delay = BACKOFF_FIRST
    while not stop.is_set():
        try:
            return Store(cfg.data_dir)
        except StoreFault as exc:
            log.error("cannot open the archive: %s (next try in %.0f s)", exc, delay)
            service.ready()  # the process is up; STATUS says what it waits for
            service.status(f"waiting for the archive: {str(exc)[:150]}")
            end = time.monotonic() + delay
            while not stop.is_set() and time.monotonic() < end:
                service.watchdog()
                stop.wait(1.0)
            delay = min(delay * 2, BACKOFF_MAX)
    return None


def keep_freed_memory(cfg: ShowConfig, device: Any) -> bool:
    """Where the show allows it and the work runs on the CPU, keep freed memory for the next step
    (``renderer.cpu_memory``). A setting of the whole process's ``malloc``: called by the entry points of
    processes that render (``kiosk worker``, ``kiosk render``), never by ``Worker`` itself, which tests run
    inside their own process."""
    from renderer import cpu_memory

    if not cfg.cpu_memory_reuse or device is None or device.type != "cpu":
        return False
    return cpu_memory.reuse_freed_memory()


def prefer_huge_pages() -> bool:
    """Ask torch to back its large CPU tensors with transparent huge pages (``THP_MEM_ALLOC_ENABLE``).

    A render on the CPU allocates activations of tens to hundreds of MB afresh at every layer, each
    faulted in 4 KB at a time. On the 2-core CPU at a load of about 3, a 512 px StyleGAN2 batch of
    four took 2.5-4.9 s with huge pages against 5.9-6.2 s without (separate processes, alternated);
    at a load of about 1 the difference was within the noise. Torch reads the setting once, at its first
    allocation, so this must run before torch is imported; an explicit setting in the environment
    wins. Returns whether it can still take effect. Where the kernel's THP mode is ``never`` it
    changes nothing. The worker asks for huge pages only where it does not keep freed memory
    (``renderer.cpu_memory``, which removes those faults altogether; huge pages then only add memory).
    """
    import sys

    if "torch" in sys.modules:
        return False
    os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
    return True


def main(cfg: ShowConfig, *, once: bool = False, max_jobs: int | None = None) -> int:
    """Entry point of ``python -m kiosk worker``."""
    from renderer import cpu_memory

    reuse = cfg.cpu_memory_reuse and cpu_memory.available()
    if not reuse:
        prefer_huge_pages()  # with memory reused, pages are not faulted in again and huge pages only cost memory
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    store = open_store_patiently(cfg, stop)
    if store is None:
        return 0
    worker = Worker(cfg, store)
    worker.install_signal_handlers()
    try:
        worker.setup()
    except ConfigError as exc:
        log.error("%s", exc)
        return 2
    if reuse:
        keep_freed_memory(cfg, worker.device)
    worker.run(max_jobs=1 if once else max_jobs)
    log.info("worker %s stopped: %d done, %d failed, %d handed back", worker.id, worker.stats.done,
             worker.stats.failed, worker.stats.released)
    return 0
