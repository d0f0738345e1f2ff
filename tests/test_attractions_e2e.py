"""Strange Attractions end to end: a StyleGAN checkpoint in an exhibit file, a real worker, a real store.

Tiny random-initialised networks are saved in the official formats (NVlabs pickle for
StyleGAN2 and StyleGAN3, the TensorFlow pickle for StyleGAN1), named from an exhibit TOML
and rendered by ``renderer.worker.Worker``; batches run as ``python -m kiosk render``
in a real process that is killed and interrupted.
"""
from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from exhibits.files import read_png_meta, sha256_file
from exhibits.playlist import spec_for
from exhibits.show import ShowConfig
from exhibits.store import Piece, Store
from tests.stylegan_helpers import (stylegan_exhibit_toml, tiny_sg1, tiny_sg2, tiny_sg3, write_nvlabs_pkl,
                                    write_tf_pkl)

ROOT = Path(__file__).resolve().parents[1]
EXHIBIT = "tiny-attractions"
SIGMA = (0.5, 2.0)

# family -> (builder writing the checkpoint, family name in the meta, family word in the label)
CHECKPOINTS = {
    "sg2-nvlabs": (lambda p: write_nvlabs_pkl(tiny_sg2(), p / "tiny-random-sg2.pkl"), "stylegan2", "StyleGAN2"),
    "sg1-tf": (lambda p: write_tf_pkl(tiny_sg1(), p / "tiny-random-sg1.pkl"), "stylegan1", "StyleGAN"),
    "sg3-nvlabs": (lambda p: write_nvlabs_pkl(tiny_sg3(), p / "tiny-random-sg3.pkl"), "stylegan3", "StyleGAN3"),
}


def write_exhibit(exdir: Path, checkpoint: Path, size: int = 16, sigma: tuple[float, float] = SIGMA) -> Path:
    exdir.mkdir(parents=True, exist_ok=True)
    path = exdir / f"{EXHIBIT.replace('-', '_')}.toml"
    path.write_text(stylegan_exhibit_toml(checkpoint, size, sigma, title="Tiny Attractions",
                                          series="Strange Attractions"))
    return path


def pixel_sha(path: Path) -> str:
    """sha256 of the decoded RGB pixels (the PNG file also carries created_at and the job id)."""
    with Image.open(path) as im:
        return hashlib.sha256(im.convert("RGB").tobytes()).hexdigest()


def render_in_process(data: Path, exdir: Path, *, seed: int, sigma: float | None = None) -> tuple[Store, Piece]:
    from renderer.worker import Worker

    cfg = ShowConfig(data_dir=data, exhibits=(EXHIBIT,), exhibit_dirs=(exdir,), device="cpu", worker_threads=1)
    store = Store(data)
    worker = Worker(cfg, store, top_up=False, poll=0.02)
    worker.setup()
    assert EXHIBIT in worker.runnable(), worker._unavailable
    import random

    spec = spec_for(worker.exhibits[EXHIBIT], random.Random(seed), seed=seed)
    params = dict(spec.params) if sigma is None else {**spec.params, "sigma": sigma}
    job = store.submit(EXHIBIT, prompts=spec.prompts, prompt_text=spec.prompt_text, seed=seed, params=params,
                       source="visitor")
    stats = worker.run(max_jobs=1, idle_exit=10)
    assert stats.done == 1, (stats, store.get_job(job.id))
    done = store.get_job(job.id)
    assert done.status == "done"
    return store, store.get_piece(done.piece_id)


# --------------------------------------------------------------------------- one piece per family


@pytest.mark.parametrize("kind", list(CHECKPOINTS))
def test_worker_renders_a_stylegan_exhibit_into_the_store(tmp_path: Path, kind: str) -> None:
    build, family, family_word = CHECKPOINTS[kind]
    ckpt = build(tmp_path)
    exdir = tmp_path / "exhibits"
    write_exhibit(exdir, ckpt)
    store, piece = render_in_process(tmp_path / "data", exdir, seed=4242)

    assert piece.generator == "stylegan" and piece.exhibit == EXHIBIT and piece.seed == 4242
    assert piece.series == "Strange Attractions"
    assert SIGMA[0] <= piece.sigma <= SIGMA[1] and piece.params["sigma"] == piece.sigma
    assert (piece.width, piece.height) == (16, 16)
    assert store.verify_piece(piece)

    meta = read_png_meta(store.path(piece.image_path))
    assert meta["checkpoint_sha256"] == sha256_file(ckpt)
    assert meta["family"] == family and meta["generator"] == "stylegan"
    assert meta["seed"] == piece.seed == 4242 and meta["sigma"] == piece.sigma
    assert meta["label"] == piece.label and meta["exhibit"] == EXHIBIT
    assert meta["config"]["settings"]["checkpoint"] == ckpt.as_posix()
    # The label names the family and the checkpoint it was given (here the file's stem, which says
    # "tiny-random"); the generator itself has no notion of a trained versus an untrained file.
    assert family_word in piece.label and ckpt.stem in piece.label
    assert f"sigma {piece.sigma:.3g}" in piece.label

    with Image.open(store.path(piece.image_path)) as im:
        arr = np.asarray(im.convert("RGB"), dtype=np.float32)
    assert arr.std() > 1.0, "a random network fed random W+ should not give a flat image"
    assert not list(store.pieces_dir.rglob(".*")), "temporary files left in the archive"


def test_piece_row_names_the_checkpoint_and_its_hash_in_models(tmp_path: Path) -> None:
    ckpt = CHECKPOINTS["sg2-nvlabs"][0](tmp_path)
    exdir = tmp_path / "exhibits"
    write_exhibit(exdir, ckpt)
    _, piece = render_in_process(tmp_path / "data", exdir, seed=1)
    assert sha256_file(ckpt) in repr(piece.models)


# --------------------------------------------------------------------------- batches as real processes


def kiosk_cmd(data: Path, exdir: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "kiosk", "render", EXHIBIT, "--count", "6", "--seed", "100",
            "--data", str(data), "--exhibit-dir", str(exdir), "--device", "cpu", *extra]


def kiosk_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}


def batch_jobs(store: Store, batch: str) -> list:
    return [j for j in store.jobs(source="batch", limit=10**6) if j.params.get("batch") == batch]


def wait_pieces(store: Store, proc: subprocess.Popen, n: int, timeout: float = 60.0, *, mid_piece: bool = False) -> int:
    """Wait until ``n`` pieces exist (and, with ``mid_piece``, the next one is being rendered)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        count = store.count_pieces()
        if (count >= n and (not mid_piece or store.running())) or proc.poll() is not None:
            return count
        time.sleep(0.005)
    raise AssertionError(f"fewer than {n} pieces after {timeout} s")


def assert_archive_whole(store: Store) -> None:
    """Nothing half-written: no temporary files, every recorded piece is on disk with its sha256."""
    assert not list(store.root.rglob(".*.tmp")) and not list(store.pieces_dir.rglob(".*")), \
        sorted(map(str, store.pieces_dir.rglob(".*")))
    for piece in store.recent_pieces(1000, include_hidden=True):
        assert store.verify_piece(piece), piece.image_path
    on_disk = sorted(p.relative_to(store.root).as_posix() for p in store.pieces_dir.rglob("*.png"))
    assert on_disk == sorted(p.image_path for p in store.recent_pieces(1000, include_hidden=True))


@pytest.fixture(scope="module")
def batch_setup(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("attractions-batch")
    ckpt = write_nvlabs_pkl(tiny_sg2(), root / "tiny-random-sg2.pkl")
    exdir = root / "exhibits"
    # A full-size canvas (as the real exhibit has) so that each piece takes long enough to interrupt.
    write_exhibit(exdir, ckpt, size=1024)
    return ckpt, exdir


def test_batch_killed_then_rerun_gives_exactly_the_batch_and_reproduces(tmp_path: Path, batch_setup) -> None:
    ckpt, exdir = batch_setup
    data = tmp_path / "data"
    store = Store(data)
    batch = f"{EXHIBIT}-100-6"
    proc = subprocess.Popen(kiosk_cmd(data, exdir), cwd=ROOT, env=kiosk_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        seen = wait_pieces(store, proc, 3, mid_piece=True)
        proc.send_signal(signal.SIGKILL)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL, f"the batch finished before it could be killed ({seen} pieces)\n{err}"
    assert 3 <= store.count_pieces() < 6
    assert len(batch_jobs(store, batch)) == 6, "all jobs of the batch are planned before rendering starts"
    assert_archive_whole(store)

    # The rerun takes back the job the killed run held (its process is gone) without waiting for the lease.
    run = subprocess.run(kiosk_cmd(data, exdir), cwd=ROOT, env=kiosk_env(), capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stderr

    jobs = batch_jobs(store, batch)
    assert len(jobs) == 6 and all(j.status == "done" for j in jobs)
    assert sorted(j.seed for j in jobs) == list(range(100, 106))
    assert sorted(j.params["batch_index"] for j in jobs) == list(range(6))
    pieces = [store.get_piece(j.piece_id) for j in jobs]
    assert store.count_pieces() == 6 and len({p.id for p in pieces}) == 6
    assert sorted(p.seed for p in pieces) == list(range(100, 106))
    assert all(SIGMA[0] <= p.sigma <= SIGMA[1] for p in pieces)
    assert_archive_whole(store)

    # Reproducible from (checkpoint hash, seed, sigma): the same piece again in a fresh store.
    original = next(p for p in pieces if p.seed == 102)
    orig_meta = read_png_meta(store.path(original.image_path))
    fresh, again = render_in_process(tmp_path / "fresh", exdir, seed=102, sigma=original.sigma)
    again_meta = read_png_meta(fresh.path(again.image_path))
    assert again_meta["checkpoint_sha256"] == orig_meta["checkpoint_sha256"] == sha256_file(ckpt)
    assert again.sigma == original.sigma and again.seed == original.seed
    assert pixel_sha(fresh.path(again.image_path)) == pixel_sha(store.path(original.image_path))
    other = next(p for p in pieces if p.seed == 103)
    assert pixel_sha(store.path(other.image_path)) != pixel_sha(store.path(original.image_path))


def test_batch_ctrl_c_stops_cleanly_and_says_how_to_resume(tmp_path: Path, batch_setup) -> None:
    _, exdir = batch_setup
    data = tmp_path / "data"
    store = Store(data)
    proc = subprocess.Popen(kiosk_cmd(data, exdir), cwd=ROOT, env=kiosk_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        wait_pieces(store, proc, 1)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    jobs = batch_jobs(store, f"{EXHIBIT}-100-6")
    done = sum(j.status == "done" for j in jobs)
    if proc.returncode == 0:  # it was already on its last piece
        assert done == 6
    else:
        assert proc.returncode == 1, err
        assert "run again to resume" in err and "Traceback" not in err, err
        assert 1 <= done < 6
    # The piece in hand was finished, not abandoned: nothing is left running or half-written.
    assert not [j for j in jobs if j.status == "running"]
    assert {j.status for j in jobs} <= {"done", "queued"}
    assert store.count_pieces() == done
    assert_archive_whole(store)


# --------------------------------------------------------------------------- no weights


def test_builtin_exhibit_without_weights_is_unavailable_with_the_fetch_command(tmp_path: Path) -> None:
    from renderer.worker import Worker

    weights = tmp_path / "weights"
    weights.mkdir()
    cfg = ShowConfig(data_dir=tmp_path / "data", weights_dir=weights, exhibits=("strange-attractions", "demo"),
                     device="cpu", worker_threads=1)
    store = Store(cfg.data_dir)
    worker = Worker(cfg, store, top_up=False)
    worker.setup()
    why = worker._unavailable["strange-attractions"]
    assert "fetch-models stylegan1-ffhq-1024" in why and str(weights) in why
    assert "strange-attractions" not in worker.runnable() and "demo" in worker.runnable()
    assert "fetch-models stylegan1-ffhq-1024" in store.get_setting("exhibits_available")["strange-attractions"]
    assert store.get_setting("exhibits_available")["demo"] == "ok"
