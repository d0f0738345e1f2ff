import multiprocessing as mp
import sqlite3
import time

import pytest
from PIL import Image

from exhibits.files import read_png_meta
from exhibits.store import Store, StoreError


def _claimer(root, name, start, out):
    s = Store(root)
    start.wait(30)
    got = []
    while True:
        job = s.claim(name, lease=60)
        if job is None:
            break
        got.append(job.id)
        time.sleep(0.002)  # a little work between claims, as a real worker does
    out.put((name, got))


def test_concurrent_workers_never_claim_the_same_job(tmp_path):
    root = tmp_path / "s"
    s = Store(root)
    ids = {s.submit("demo", seed=i).id for i in range(200)}
    ctx = mp.get_context("spawn")
    out, start = ctx.Queue(), ctx.Event()
    procs = [ctx.Process(target=_claimer, args=(str(root), f"w{i}", start, out)) for i in range(4)]
    for p in procs:
        p.start()
    time.sleep(1.0)  # let every process open the store before the race starts
    start.set()
    results = [out.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=30)
    claimed = [j for _, got in results for j in got]
    assert len(claimed) == len(set(claimed)), "a job was claimed twice"
    assert set(claimed) == ids
    assert sum(1 for _, got in results if got) >= 2, "only one process ever won a claim"
    assert s.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_priority_order_and_queue_position(store):
    play = store.submit("demo", source="playlist")
    vis = store.submit("demo", source="visitor", prompt_text="fire")
    tap = store.submit("demo", source="tap")
    assert [store.queue_position(j.id) for j in (tap, vis, play)] == [1, 2, 3]
    assert store.claim("w").id == tap.id
    assert store.queue_position(tap.id) is None


def test_dead_workers_do_not_use_up_attempts_and_a_job_that_keeps_killing_them_is_held(store):
    from exhibits.store import MAX_WORKER_DEATHS

    job = store.submit("demo", source="visitor", prompt_text="keep me", max_attempts=2)
    for death in range(1, MAX_WORKER_DEATHS):
        assert store.claim(f"host-a:{1000 + death}", lease=0.01).id == job.id
        time.sleep(0.03)
        store.requeue_expired()
        back = store.get_job(job.id)
        assert back.status == "queued" and back.attempts == 0 and back.deaths == death
    assert store.claim("host-a:1999", lease=0.01).id == job.id
    time.sleep(0.03)
    store.requeue_expired()
    held = store.get_job(job.id)
    assert held.status == "held" and held.held_for_staff and held.prompt_text == "keep me"
    assert "host-a:1999" in held.error  # staff see which worker
    said = held.public()["error"]
    assert "host-a" not in said and "1999" not in said and "staff" in said  # the visitor reads plain words
    assert store.claim("w") is None
    assert store.approve(job.id)
    again = store.get_job(job.id)
    assert again.status == "queued" and again.deaths == 0 and again.error is None


def test_render_failures_use_attempts_and_the_visitor_reads_plain_words(store):
    job = store.submit("demo", source="visitor", prompt_text="fire", max_attempts=2)
    store.claim("vm:13134")
    assert store.fail(job.id, "vm:13134", "RuntimeError: CUDA error on vm:13134", retry=True).status == "queued"
    store.claim("vm:13134")
    failed = store.fail(job.id, "vm:13134", "RuntimeError: CUDA error on vm:13134", retry=True)
    assert failed.status == "failed" and failed.attempts == 2 and "CUDA" in failed.error
    assert "vm:" not in failed.public()["error"] and "13134" not in failed.public()["error"]
    assert store.retry(job.id) and store.get_job(job.id).status == "queued"


def test_only_the_lease_holder_may_finish(store):
    job = store.submit("demo")
    claimed = store.claim("w1")
    with pytest.raises(StoreError, match="no longer held by worker w2"):
        store.add_piece(claimed, "w2", Image.new("RGB", (8, 8)), {"generator": "default"})
    assert store.count_pieces() == 0
    assert not list(store.pieces_dir.rglob("*.png.*")), "a temporary file was left behind"
    assert not [p for p in store.pieces_dir.rglob("*") if p.is_file()], "a piece file was left without its row"
    assert store.heartbeat(job.id, "w1") and not store.heartbeat(job.id, "w2")


def test_piece_row_and_png_metadata_agree(store):
    store.submit("demo", prompts=[("fire", 1.0), ("ice", 0.5)], prompt_text="fire | ice", seed=42,
                 params={"sigma": 1.5})
    job = store.claim("w")
    img = Image.new("RGB", (40, 30), (10, 200, 30))
    meta = {"series": "S", "title": "T", "generator": "default", "label": "weights-free", "sigma": 1.5,
            "params": {"sigma": 1.5}, "models": {"net": "sha256:abc"}, "config": {"k": 1}}
    piece = store.add_piece(job, "w", img, meta)
    assert store.get_job(job.id).status == "done" and store.get_job(job.id).piece_id == piece.id
    png = read_png_meta(store.path(piece.image_path))
    assert png["seed"] == piece.seed == 42 and png["prompts"] == [["fire", 1.0], ["ice", 0.5]]
    assert png["models"] == piece.models and png["sigma"] == piece.sigma == 1.5
    assert store.verify_piece(piece)
    store.path(piece.image_path).write_bytes(b"tampered")
    assert not store.verify_piece(piece)
    with pytest.raises(StoreError, match="outside the store"):
        store.path("../../etc/passwd")


def test_moderation_hold_approve_cancel(store):
    held = store.submit("demo", source="visitor", held=True)
    assert store.claim("w") is None
    assert store.approve(held.id) and store.claim("w").id == held.id
    other = store.submit("demo", source="visitor")
    assert store.cancel(other.id) and store.get_job(other.id).status == "cancelled"
    assert store.claim("w") is None


def test_store_survives_reopen_and_rejects_bad_source(tmp_path):
    s = Store(tmp_path)
    job = s.submit("demo", prompt_text="persist")
    s.close()
    s2 = Store(tmp_path)
    assert s2.get_job(job.id).prompt_text == "persist"
    with pytest.raises(StoreError, match="unknown job source 'x'"):
        s2.submit("demo", source="x")
    assert isinstance(s2.conn, sqlite3.Connection)


def test_pruning_keeps_visitors_and_curated_pieces(store):
    made = {}
    for i, source in enumerate(["playlist", "visitor", "playlist", "playlist", "playlist"]):
        store.submit("demo", source=source, seed=i)
        job = store.claim("w")
        made[i] = store.add_piece(job, "w", Image.new("RGB", (8, 8)), {"generator": "default"})
    store.set_curation(made[0].id, "keep")
    cached = store.root / "exports" / str(made[2].id) / "print"
    cached.mkdir(parents=True)
    (cached / "piece.pdf").write_bytes(b"%PDF")
    assert store.prune_playlist_pieces(keep=1) == 2
    assert not cached.exists()  # pieces 2 and 3; 4 is the newest playlist piece
    left = {p.seed for p in store.recent_pieces(10)}
    assert left == {0, 1, 4}
    assert not store.path(made[2].image_path).exists() and store.path(made[1].image_path).exists()


def test_archive_files_are_readable_by_the_web_user(store):
    store.submit("demo")
    job = store.claim("w")
    piece = store.add_piece(job, "w", Image.new("RGB", (8, 8)), {"generator": "default"})
    assert store.path(piece.image_path).stat().st_mode & 0o777 == 0o644


def test_a_job_cancelled_while_its_piece_is_written_leaves_no_files(store, monkeypatch):
    job = store.submit("demo", source="visitor")
    claimed = store.claim("w")
    real = store._record_piece

    def cancelled_meanwhile(*args, **kw):
        store.cancel(job.id)  # staff cancel between the file writes and the row
        return real(*args, **kw)

    monkeypatch.setattr(store, "_record_piece", cancelled_meanwhile)
    with pytest.raises(StoreError, match="no longer held"):
        store.add_piece(claimed, "w", Image.new("RGB", (8, 8)), {"generator": "default"},
                        extra_files={})
    assert store.count_pieces() == 0 and store.get_job(job.id).status == "cancelled"
    assert not [p for p in store.pieces_dir.rglob("*") if p.is_file()]


def test_only_runnable_urgent_jobs_count_for_preemption(store):
    store.submit("doorways", source="playlist")
    running = store.claim("w")
    store.submit("strange-attractions", source="tap")  # an exhibit this worker has no weights for
    assert store.higher_priority_waiting(running.priority)
    assert not store.higher_priority_waiting(running.priority, ["doorways", "demo"])
    store.submit("demo", source="visitor")
    assert store.higher_priority_waiting(running.priority, ["doorways", "demo"])


def test_live_frames_are_removed_when_their_job_ends(store):
    jobs = [store.submit("demo") for _ in range(3)]
    for job in jobs:
        store.claim("w")
        store.publish_frame(job.id, "w", b"jpeg", step=1, total=2)
    frames = [store.progress_dir / f"job-{j.id}.jpg" for j in jobs]
    assert all(f.exists() for f in frames)
    store.add_piece(store.get_job(jobs[0].id), "w", Image.new("RGB", (8, 8)), {"generator": "default"})
    store.fail(jobs[1].id, "w", "broken", retry=False)
    store.cancel(jobs[2].id)
    assert not any(f.exists() for f in frames)
    assert all(store.get_job(j.id).frame_path is None for j in jobs)


def test_an_older_store_gains_added_columns_once(tmp_path):
    from exhibits.store import _add_missing_columns

    db = tmp_path / "old.sqlite3"
    first = sqlite3.connect(db, isolation_level=None)
    first.execute("CREATE TABLE pieces (id INTEGER PRIMARY KEY, title TEXT)")
    first.execute("INSERT INTO pieces(title) VALUES ('kept')")
    second = sqlite3.connect(db, isolation_level=None)
    added = [("pieces", "shown_at", "REAL"), ("pieces", "note", "TEXT NOT NULL DEFAULT ''")]
    for c in (first, second):  # two processes opening the same old file: the second finds them there
        c.execute("BEGIN IMMEDIATE")
        _add_missing_columns(c, added)
        c.execute("COMMIT")
    cols = [row[1] for row in first.execute("PRAGMA table_info(pieces)")]
    assert cols == ["id", "title", "shown_at", "note"]
    assert first.execute("SELECT title, shown_at, note FROM pieces").fetchone() == ("kept", None, "")
