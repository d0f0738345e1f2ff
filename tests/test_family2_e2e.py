"""Big Sleep, dVAE+CLIP, DeepDream and CLIP-guided diffusion end to end: their tiny exhibits through a real
worker and a real store.

Jobs come from each exhibit's own playlist prompts; the worker renders them with
live frames, writes the pieces (PNG + metadata) and labels them as random tiny
models.  One worker hosts all four generators at once.
"""
from __future__ import annotations

import threading

from exhibits.files import read_png_meta
from exhibits.playlist import Playlist
from exhibits.show import ShowConfig
from exhibits.store import Store

EXHIBITS = ("big-sleep-tiny", "dvae-clip-tiny", "deepdream-tiny", "clip-diffusion-tiny")
QUICK = {"big-sleep-tiny": {"steps": 4, "progress_every": 1},
         "dvae-clip-tiny": {"steps": 3, "progress_every": 1},
         "deepdream-tiny": {"octaves": 2, "iterations": 2, "progress_every": 1},
         "clip-diffusion-tiny": {"steps": 3, "progress_every": 1}}
LABELS = {"big-sleep-tiny": ("big_sleep", "tiny random-initialised"),
          "dvae-clip-tiny": ("dvae_clip", "tiny random-initialised"),
          "deepdream-tiny": ("deepdream", "random-initialised GoogLeNet"),
          "clip-diffusion-tiny": ("clip_diffusion", "tiny random-initialised")}


def test_each_generator_makes_pieces_through_the_worker(tmp_path):
    from renderer.worker import Worker

    data = tmp_path / "data"
    cfg = ShowConfig(data_dir=data, exhibits=EXHIBITS, device="cpu")
    store = Store(data)
    worker = Worker(cfg, store, lease=30.0, poll=0.02, top_up=False)
    worker.setup()
    assert set(worker.runnable()) == set(EXHIBITS), worker._unavailable
    playlist = Playlist({n: worker.exhibits[n] for n in EXHIBITS}, seed=4)
    jobs = {}
    for name in EXHIBITS:
        assert not worker.exhibits[name].instant  # optimising generators: pre-emptible, checkpointed
        spec = playlist.next(only=[name])
        assert spec.prompts
        jobs[name] = store.submit(name, prompts=spec.prompts, prompt_text=spec.prompt_text, seed=spec.seed,
                                  params={**spec.params, **QUICK[name]}, source="playlist")
    frames_seen: set[str] = set()
    runner = threading.Thread(target=worker.run, kwargs={"max_jobs": len(EXHIBITS)}, daemon=True)
    runner.start()
    while runner.is_alive():
        for name, job in jobs.items():
            j = store.get_job(job.id)
            if j.status == "running" and j.frame_path:
                frames_seen.add(name)
        runner.join(timeout=0.05)
    assert worker.stats.done == len(EXHIBITS), (worker.stats, [store.get_job(j.id) for j in jobs.values()])
    for name, job in jobs.items():
        done = store.get_job(job.id)
        assert done.status == "done", done
        piece = store.get_piece(done.piece_id)
        meta = read_png_meta(store.path(piece.image_path))
        generator, words = LABELS[name]
        assert meta["generator"] == generator
        assert words in meta["label"] and words in piece.label
        assert all(m.get("weights") == "random-init" for m in _models(meta["models"]))
        assert store.verify_piece(piece)
    assert frames_seen, "no live progress frame was ever published"
    store.close()


def _models(models):
    for v in models.values():
        if isinstance(v, list):
            yield from v
        else:
            yield v
