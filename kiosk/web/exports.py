"""Print PDFs, AR packs and GLB models made off the request threads, served as plain files.

A download request only reads or inserts one row of the store's ``exports`` table
(``pending`` -> ``running`` -> ``ready`` | ``failed``) and answers at once: the file
when it is ready, "being prepared" (202) when it is not. One dispatcher thread in
the web app claims pending rows and hands each to a small pool of separate,
low-priority processes (``export_processes``, default 1) that call the filters
package's entry points unchanged (``filters.registry.export``). A separate process
keeps the exporters' CPU time and memory (upscaling, PDF/ZIP compression) off the
interpreter that serves phones; the table is the queue, so its length is bounded
by pieces x kinds and nothing is lost when the web app restarts (a row left
``running`` by a dead process is taken again).

Before a new export is announced ready the cache (``<store>/exports``) is pruned to ``export_cache_mb``,
least recently downloaded first; a pruned file is simply made again when asked for.
"""
from __future__ import annotations

import hashlib
import logging
import os
import threading
import zipfile
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# kind -> (exporter names to try, file suffix served, download suffix)
EXPORTS = {
    "print": (("print",), ".pdf", "print-20cm.pdf"),
    # the desktop AR tools' packs (README on top): linked from the staff pages, not the phone's
    "ar": (("ar_packs", "ar_bundle", "bundle", "ar"), ".zip", "ar-packs.zip"),
    "glb": (("glb",), ".glb", "model.glb"),
    "usdz": (("usdz",), ".usdz", "model.usdz"),
}
AR_FORMATS = ("sparkar", "lensstudio", "effecthouse", "glb")


class ExportFailed(RuntimeError):
    """An export could not be made; the message is for the log and the staff, not for visitors."""


def _lower_priority() -> None:
    try:
        os.nice(10)
    except OSError:
        pass


def export_options(kind: str, accepted: dict[str, Any], weights_dir: str | None = None) -> dict[str, Any]:
    """Options for the exporter: a 20 x 20 cm print (the PDF alone); one AR pack holding every AR format."""
    opts: dict[str, Any] = {}
    if kind == "print":
        if "size_cm" in accepted:
            opts["size_cm"] = 20.0
        elif "width_cm" in accepted and "height_cm" in accepted:
            opts.update(width_cm=20.0, height_cm=20.0)
        if "raster" in accepted:
            opts["raster"] = "none"  # the phone gets the PDF; the print shop's TIFF comes from the CLI
        if "weights_dir" in accepted and weights_dir:
            opts["weights_dir"] = weights_dir  # an installed super-resolution model is used for the print
    if kind == "ar":
        if "keep_parts" in accepted:
            opts["keep_parts"] = False
        if "formats" in accepted and isinstance(accepted["formats"], (tuple, list)):
            ar = tuple(f for f in accepted["formats"] if f in AR_FORMATS)
            if ar:
                opts["formats"] = ar
    return opts


def _zip_files(files: list[Path], dest: Path) -> Path:
    from exhibits.files import atomic_path

    with atomic_path(dest) as tmp:
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
            for f in files:
                zf.write(f, f.relative_to(dest.parent))
    for f in files:
        f.unlink(missing_ok=True)
    return dest


def make_export(store_root: str, piece_id: int, kind: str, url: str,
                weights_dir: str | None = None) -> tuple[str, int, str]:
    """Run in an export process: write export ``kind`` of piece ``piece_id``; returns (relative path, size,
    sha256). Raises :class:`ExportFailed` with the reason."""
    from exhibits.store import Store

    store = Store(store_root)
    try:
        piece = store.get_piece(piece_id, include_hidden=True)
        if piece is None:
            raise ExportFailed(f"piece {piece_id} is not in the archive")
        names, suffix, _ = EXPORTS[kind]
        try:
            from filters import registry
            known = registry.names()
        except ImportError as exc:
            raise ExportFailed(f"the exporters could not be loaded: {exc}") from exc
        name = next((n for n in names if n in known), None)
        if name is None:
            raise ExportFailed(f"no {kind} exporter is installed (looked for {', '.join(names)})")
        out_dir = store.path(f"exports/{piece_id}/{kind}")
        meta = {**piece.public(), "piece_id": piece.id, "prompts": [list(x) for x in piece.prompts],
                "params": piece.params, "models": piece.models, "url": url}
        opts = export_options(kind, registry.exporter_options(name), weights_dir)
        try:
            files = registry.export(name, store.path(piece.image_path), meta, out_dir,
                                    basename=f"piece-{piece.id}", **opts)
        except (registry.ExportError, OSError, ValueError) as exc:
            raise ExportFailed(f"{name} exporter: {exc}") from exc
        chosen = sorted((f for f in files if f.suffix == suffix), key=lambda f: (name not in f.stem, f.name))
        if chosen:
            for extra in files:
                if extra != chosen[0]:
                    extra.unlink(missing_ok=True)  # the cache holds exactly the file that is served
            path = chosen[0]
        elif files:
            path = _zip_files(files, out_dir / f"piece-{piece.id}-{kind}{suffix}")
        else:
            raise ExportFailed(f"the {name} exporter wrote no files")
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        return str(path.relative_to(store.root)), path.stat().st_size, h.hexdigest()
    finally:
        store.close()


class ExportQueue:
    """The dispatcher thread and its process pool (started on the first request for an export)."""

    def __init__(self, store_root: Path, *, processes: int = 1, cache_bytes: int = 2 << 30,
                 url_for_piece: Any = None, weights_dir: str | os.PathLike | None = None):
        self.store_root = Path(store_root)
        self.processes = max(1, processes)
        self.cache_bytes = cache_bytes
        self.url_for_piece = url_for_piece or (lambda pid: "")
        self.weights_dir = str(weights_dir) if weights_dir is not None else None
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._pool: ProcessPoolExecutor | None = None

    def start(self) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._stop.clear()
                self._thread = threading.Thread(target=self._run, name="export-dispatcher", daemon=True)
                self._thread.start()

    def wake(self) -> None:
        self.start()
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def _executor(self) -> ProcessPoolExecutor:
        if self._pool is None:
            import multiprocessing

            # spawn, not fork: the web app has threads and open SQLite connections
            self._pool = ProcessPoolExecutor(self.processes, mp_context=multiprocessing.get_context("spawn"),
                                             initializer=_lower_priority)
        return self._pool

    def _run(self) -> None:
        from concurrent.futures.process import BrokenProcessPool

        from exhibits.store import Store

        store = Store(self.store_root)
        running: dict[Future, tuple[int, str]] = {}
        try:
            while not self._stop.is_set():
                self._wake.clear()
                while len(running) < self.processes:
                    row = store.claim_export()
                    if row is None:
                        break
                    key = (row["piece_id"], row["kind"])
                    fut = self._executor().submit(make_export, str(self.store_root), key[0], key[1],
                                                  self.url_for_piece(key[0]), self.weights_dir)
                    running[fut] = key
                if not running:
                    self._wake.wait(5.0)
                    continue
                finished, _ = wait(list(running), timeout=0.5, return_when=FIRST_COMPLETED)
                done = list(finished)
                for fut in done:
                    pid, kind = running.pop(fut)
                    try:
                        rel, size, sha = fut.result()
                    except BrokenProcessPool as exc:
                        self._pool = None
                        store.finish_export(pid, kind, error=f"the export process died: {exc}")
                        log.error("export %s of piece %d: the export process died", kind, pid)
                    except (ExportFailed, OSError, ValueError, RuntimeError) as exc:
                        store.finish_export(pid, kind, error=str(exc))
                        log.error("export %s of piece %d failed: %s", kind, pid, exc)
                    else:
                        self.prune(store, incoming=size)  # the bound holds before the new file is announced
                        store.finish_export(pid, kind, path=rel, size=size, sha256=sha)
                        log.info("export %s of piece %d ready (%d bytes)", kind, pid, size)
        finally:
            store.close()

    def prune(self, store: Any, *, incoming: int = 0) -> int:
        """Keep the export cache under its size bound, least recently downloaded first, with room for a new file
        of ``incoming`` bytes."""
        gone = 0
        for row in store.exports_to_prune(self.cache_bytes, incoming=incoming):
            if row["path"]:
                try:
                    store.path(row["path"]).unlink(missing_ok=True)
                except (OSError, RuntimeError) as exc:
                    log.warning("could not remove cached export %s: %s", row["path"], exc)
                    continue
            store.forget_export(row["piece_id"], row["kind"])
            gone += 1
        if gone:
            log.info("export cache: removed %d least recently used files (bound %d MB)", gone,
                     self.cache_bytes >> 20)
        return gone
