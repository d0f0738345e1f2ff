"""Exporting many pieces at once, one process per core: ``python -m kiosk export --kind bundle``.

Each worker process exports whole pieces (every format of one piece in one process, so a
texture that several formats share is encoded once); pieces go to the workers as they
free up, a progress bar counts finished pieces, and a piece that fails is reported by
name without stopping the others or leaving half-written files (each export is atomic).
"""
from __future__ import annotations

import logging
import multiprocessing
import os
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Item:
    image: str
    meta: Mapping[str, Any]
    out_dir: str
    basename: str | None = None


@dataclass
class Result:
    done: dict[int, list[Path]] = field(default_factory=dict)  # item index -> files written
    failed: dict[int, str] = field(default_factory=dict)  # item index -> error message


def _init_worker(weights_dir: str | None) -> None:
    # A worker that will upscale with a model loads torch once, so the model runs in-process and stays loaded.
    from filters.upscale import installed_models

    if installed_models(weights_dir):
        import torch  # noqa: F401

        torch.set_num_threads(1)


def _run(name: str, item: Item, opts: Mapping[str, Any]) -> list[Path]:
    from filters.registry import export

    return export(name, item.image, item.meta, item.out_dir, basename=item.basename, **opts)


def export_many(items: Sequence[Item], name: str = "bundle", options: Mapping[str, Any] | None = None, *,
                workers: int | None = None, weights_dir: str | os.PathLike | None = None,
                progress: bool = True) -> Result:
    """Run exporter ``name`` on every item, ``workers`` processes at a time (default: one per core)."""
    from tqdm import tqdm

    from filters.registry import ExportError, _check_options

    opts = dict(options or {})
    _check_options(name, opts)
    workers = max(1, min(workers or os.cpu_count() or 1, len(items) or 1))
    result = Result()
    bar = tqdm(total=len(items), unit="piece", desc=f"export {name}", disable=not progress)
    wd = str(weights_dir) if weights_dir is not None else None
    ctx = multiprocessing.get_context("forkserver" if "forkserver" in multiprocessing.get_all_start_methods()
                                      else "spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_init_worker,
                             initargs=(wd,)) as pool:
        pending: dict[Future, int] = {}
        queue = list(enumerate(items))
        queue.reverse()

        def top_up() -> None:
            while queue and len(pending) < 2 * workers:  # a short queue: Ctrl-C stops soon
                i, item = queue.pop()
                pending[pool.submit(_run, name, item, opts)] = i

        top_up()
        while pending:
            finished, _ = wait(pending, return_when=FIRST_COMPLETED)
            for fut in finished:
                i = pending.pop(fut)
                try:
                    result.done[i] = fut.result()
                except ExportError as exc:
                    result.failed[i] = str(exc)
                    log.error("export %s of %s failed: %s", name, items[i].image, exc)
                bar.update(1)
            top_up()
    bar.close()
    return result
