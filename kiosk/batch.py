"""Batch rendering for merch: ``python -m kiosk render strange-attractions --count 5000``.

All jobs of a batch are written to the store first, with seeds ``seed .. seed+count-1``
and the sigma drawn from a generator seeded by the batch's own seed, so a batch is
reproducible from (checkpoint hash, seed, sigma). Running the same command again
after a crash or Ctrl-C renders only what is missing.

An exhibit with realm sets (Doorways) walks its sets in series order: piece ``i``
paints set ``i mod len(sets)``, so ``--count`` equal to the number of sets (the
default) gives one print per realm pair for a zine table. ``--sets`` chooses a
subset by group name ("Afterlife"), by pair ("Heaven/Hell") or by one realm ("Moon").
"""
from __future__ import annotations

import logging
import os
import random
import re

from typing import Sequence

from exhibits.config import Exhibit, load_exhibits
from exhibits.playlist import spec_for
from exhibits.show import ShowConfig
from exhibits.store import Store

log = logging.getLogger(__name__)


def _norm(text: str) -> str:
    return " ".join(text.lower().split())


def choose_sets(ex: Exhibit, wanted: Sequence[str] | None = None) -> list[tuple[str, ...]]:
    """The exhibit's realm sets in series order, or those that ``wanted`` names.

    Each entry of ``wanted`` is a group name, a set written ``A/B`` (or ``A | B``), or
    one realm (every set containing it). Unknown names raise ``ValueError`` listing
    what the exhibit has.
    """
    everything = ex.all_sets()
    if not wanted:
        return [s for _, s in everything]
    chosen: list[tuple[str, ...]] = []
    for entry in wanted:
        key = _norm(entry)
        parts = tuple(_norm(p) for p in re.split(r"[/|]", entry) if p.strip())
        hits = [s for g, s in everything if _norm(g) == key] or \
            [s for _, s in everything if tuple(_norm(r) for r in s) == parts] or \
            [s for _, s in everything if len(parts) == 1 and parts[0] in (_norm(r) for r in s)]
        if not hits:
            groups = sorted({g for g, _ in everything})
            pairs = ", ".join("/".join(s) for _, s in everything)
            raise ValueError(f"--sets {entry!r} names no group, set or realm of exhibit {ex.name}; "
                             f"groups: {', '.join(groups) or '(none)'}; sets: {pairs or '(none)'}")
        chosen += [s for s in hits if s not in chosen]
    return chosen


def plan_batch(store: Store, cfg: ShowConfig, exhibit: str, *, count: int | None, seed: int, batch: str,
               sigma: float | None = None, prompt: str | None = None,
               sets: Sequence[str] | None = None) -> int:
    """Queue the batch's missing jobs; returns how many were added.

    ``count`` None means one piece per chosen realm set (or one piece for an
    exhibit without sets).
    """
    ex = load_exhibits([exhibit], cfg.exhibit_dirs)[exhibit]
    if sets and prompt is not None:
        raise ValueError("--sets and --prompt cannot be used together: a prompt replaces the realm sets")
    if sets and not ex.all_sets():
        raise ValueError(f"--sets: exhibit {ex.name} has no realm sets")
    walk = [] if prompt is not None else choose_sets(ex, sets)
    if count is None:
        count = len(walk) or 1
    if count < 1:
        raise ValueError(f"--count must be at least 1, got {count}")
    existing = {j.params.get("batch_index") for j in store.jobs(source="batch", limit=10**9)
                if j.params.get("batch") == batch}
    rng = random.Random(seed)
    added = 0
    for i in range(count):
        realms = walk[i % len(walk)] if walk else None
        # the rng advances identically on every run, so a rerun plans the same jobs
        spec = spec_for(ex, rng, realms=realms, text=prompt, seed=seed + i)
        if i in existing:
            continue
        params = {**spec.params, "batch": batch, "batch_index": i}
        if sigma is not None:
            params["sigma"] = sigma
        store.submit(ex.name, prompts=spec.prompts, prompt_text=spec.prompt_text, seed=spec.seed, params=params,
                     source="batch")
        added += 1
    return added


def _batch_jobs(store: Store, batch: str) -> list:
    return [j for j in store.jobs(source="batch", limit=10**9) if j.params.get("batch") == batch]


def batch_progress(store: Store, batch: str) -> tuple[int, int]:
    jobs = _batch_jobs(store, batch)
    return sum(j.status == "done" for j in jobs), len(jobs)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def recover_batch(store: Store, batch: str) -> int:
    """Before a rerun: jobs left running by a batch run that died go back to the queue at once (no waiting
    for their lease), and failed ones are tried again. Returns how many jobs were recovered."""
    recovered = 0
    prefix = f"batch:{batch}:"
    for job in _batch_jobs(store, batch):
        if job.status == "running" and job.worker and job.worker.startswith(prefix):
            pid = job.worker[len(prefix):]
            if pid.isdigit() and not _pid_alive(int(pid)):
                store.release(job.id, job.worker, "the batch run that held it is gone")
                recovered += 1
        elif job.status == "failed" and store.retry(job.id):
            recovered += 1
    return recovered


def default_batch_name(exhibit: str, seed: int, count: int | None, sets: Sequence[str] | None = None) -> str:
    name = f"{exhibit}-{seed}-{'sets' if count is None else count}"
    if sets:
        name += "-" + (re.sub(r"[^a-z0-9]+", "-", "-".join(sets).lower()).strip("-")[:40] or "sets")
    return name


def render_batch(cfg: ShowConfig, exhibit: str, *, count: int | None = 1, seed: int = 0, batch: str | None = None,
                 sigma: float | None = None, prompt: str | None = None, sets: Sequence[str] | None = None,
                 keep_memory: bool = False) -> int:
    """Render a batch in this process. ``keep_memory``: keep freed memory for the next step, as the worker
    does (a setting of the whole process; ``kiosk render`` asks for it)."""
    from tqdm import tqdm

    from renderer.worker import Worker, keep_freed_memory

    batch = batch or default_batch_name(exhibit, seed, count, sets)
    store = Store(cfg.data_dir)
    cfg = cfg.with_overrides(exhibits=(exhibit,))
    added = plan_batch(store, cfg, exhibit, count=count, seed=seed, batch=batch, sigma=sigma, prompt=prompt,
                       sets=sets)
    recovered = recover_batch(store, batch)
    done, total = batch_progress(store, batch)
    log.info("batch %s: %d of %d done, %d newly queued, %d recovered", batch, done, total, added, recovered)
    worker = Worker(cfg, store, top_up=False, batch=batch, worker_id=f"batch:{batch}:{os.getpid()}")
    worker.install_signal_handlers()
    worker.setup()
    if keep_memory:
        keep_freed_memory(cfg, worker.device)
    if exhibit not in worker.runnable():
        raise RuntimeError(f"exhibit {exhibit} cannot run here: {worker._unavailable.get(exhibit)}")
    with tqdm(total=total, initial=done, unit="piece", desc=batch) as bar:
        while not worker._stop.is_set():
            job = store.claim(worker.id, exhibits=[exhibit], lease=worker.lease, batch=batch)
            if job is None:
                break
            worker.process_through_full_disks(job)
            bar.n = batch_progress(store, batch)[0]
            bar.refresh()
    done, total = batch_progress(store, batch)
    log.info("batch %s: %d of %d done%s", batch, done, total, "" if done == total else " (run again to resume)")
    return 0 if done == total else 1
