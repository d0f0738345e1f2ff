"""The archive keeps its identity: deleted, emptied, truncated, damaged or swapped stores are refused with the file
named and the fix, never silently replaced; backups restore without reusing ids; rows without images are hidden."""
from __future__ import annotations

import multiprocessing as mp
import random
import shutil
import sqlite3

import pytest
from PIL import Image

from exhibits.store import (ArchiveIdentityError, Store, StoreDamagedError, StoreError, StoreUnavailableError,
                            list_backups, restore)


def _archive(root, n=3):
    s = Store(root)
    pieces = []
    for i in range(n):
        s.submit("demo", source="visitor", prompt_text=f"p{i}", seed=i)
        job = s.claim("w")
        pieces.append(s.add_piece(job, "w", Image.new("RGB", (16, 16), (i * 40, 0, 0)), {"generator": "default"}))
    return s, pieces


def _files(root):
    return sorted(p.relative_to(root) for p in (root / "pieces").rglob("*") if p.is_file())


@pytest.mark.parametrize("fault", ["deleted", "emptied"])
def test_missing_or_emptied_store_next_to_pieces_is_refused(tmp_path, fault):
    root = tmp_path / "a"
    s, pieces = _archive(root)
    s.close()
    before = _files(root)
    db = root / "kiosk.sqlite3"
    for side in ("-wal", "-shm"):
        (root / f"kiosk.sqlite3{side}").unlink(missing_ok=True)
    if fault == "deleted":
        db.unlink()
    else:
        db.write_bytes(b"")
    with pytest.raises(ArchiveIdentityError) as err:
        Store(root)
    msg = str(err.value)
    assert str(db) in msg and "kiosk restore" in msg and "3 piece image(s)" in msg
    assert ("is missing" if fault == "deleted" else "is empty") in msg
    assert isinstance(err.value, StoreError)
    assert _files(root) == before  # nothing touched
    assert (db.exists() and db.stat().st_size == 0) if fault == "emptied" else not db.exists()


def test_missing_identity_file_and_store_with_pieces_left_is_still_refused(tmp_path):
    root = tmp_path / "a"
    s, _ = _archive(root, 1)
    s.close()
    for f in ("kiosk.sqlite3", "kiosk.sqlite3-wal", "kiosk.sqlite3-shm", "ARCHIVE"):
        (root / f).unlink(missing_ok=True)
    with pytest.raises(ArchiveIdentityError, match="1 piece image"):
        Store(root)


def test_a_fresh_archive_gets_an_identity_kept_in_the_database_and_beside_it(tmp_path):
    s = Store(tmp_path / "a")
    assert len(s.archive_id) == 16
    assert s.archive_id in (tmp_path / "a" / "ARCHIVE").read_text()
    assert Store(tmp_path / "a").archive_id == s.archive_id


def test_another_archives_database_is_refused(tmp_path):
    a, _ = _archive(tmp_path / "a", 1)
    b = Store(tmp_path / "b")
    a.close()
    b.close()
    shutil.copy(tmp_path / "b" / "kiosk.sqlite3", tmp_path / "a" / "kiosk.sqlite3")
    for side in ("-wal", "-shm"):
        (tmp_path / "a" / f"kiosk.sqlite3{side}").unlink(missing_ok=True)
    with pytest.raises(ArchiveIdentityError, match=f"belongs to archive {b.archive_id}"):
        Store(tmp_path / "a")


def _checkpointed(root):
    s, pieces = _archive(root, 20)
    s.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    s.close()
    for side in ("-wal", "-shm"):
        (root / f"kiosk.sqlite3{side}").unlink(missing_ok=True)
    return root / "kiosk.sqlite3"


def test_truncated_store_is_reported_with_the_file_and_sqlites_words(tmp_path):
    db = _checkpointed(tmp_path / "a")
    data = db.read_bytes()
    db.write_bytes(data[: len(data) // 2])
    with pytest.raises(StoreDamagedError) as err:
        Store(tmp_path / "a")
    msg = str(err.value)
    assert str(db) in msg and "quick_check" in msg and "kiosk restore" in msg
    assert db.stat().st_size == len(data) // 2  # left as it was, for the technician


def test_damaged_header_is_reported(tmp_path):
    db = _checkpointed(tmp_path / "a")
    data = bytearray(db.read_bytes())
    data[:16] = b"garbage garbage!"
    db.write_bytes(bytes(data))
    with pytest.raises(StoreDamagedError, match="not a database") as err:
        Store(tmp_path / "a")
    assert str(db) in str(err.value)


def test_random_bytes_in_one_page_are_reported_with_integrity_checks_words(tmp_path):
    db = _checkpointed(tmp_path / "a")
    data = bytearray(db.read_bytes())
    page = 4096
    assert len(data) >= 3 * page
    rng = random.Random(1)
    data[2 * page:3 * page] = bytes(rng.randrange(256) for _ in range(page))  # one whole table page
    db.write_bytes(bytes(data))
    with pytest.raises(StoreDamagedError) as err:
        Store(tmp_path / "a")
    msg = str(err.value)
    assert str(db) in msg and ("malformed" in msg or "quick_check says" in msg)


def test_a_locked_database_is_a_passing_fault(tmp_path):
    s = Store(tmp_path / "a", timeout=0.2)
    other = sqlite3.connect(tmp_path / "a" / "kiosk.sqlite3", isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(StoreUnavailableError, match="locked") as err:
            s.submit("demo")
        assert not err.value.disk_full and "kiosk.sqlite3" in str(err.value)
    finally:
        other.execute("ROLLBACK")
    assert s.submit("demo").status == "queued"


def _open(root, start, out):
    start.wait(30)
    try:
        out.put(Store(root).archive_id)
    except Exception as exc:  # reported to the parent, which fails the test with it
        out.put(repr(exc))


def test_processes_opening_a_fresh_archive_together_agree_on_its_identity(tmp_path):
    ctx = mp.get_context("spawn")
    start, out = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_open, args=(str(tmp_path / "fresh"), start, out)) for _ in range(4)]
    for p in procs:
        p.start()
    start.set()
    ids = [out.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(30)
    assert len(set(ids)) == 1 and len(ids[0]) == 16, ids


def test_backup_restore_keeps_identity_and_never_reuses_ids(tmp_path):
    root = tmp_path / "a"
    s, pieces = _archive(root, 2)
    backup = s.backup()
    assert backup.parent == root / "backups" and s.archive_id in backup.name
    later = []
    for i in range(3):  # pieces made after the backup: their ids are in QR codes already
        s.submit("demo", seed=100 + i)
        later.append(s.add_piece(s.claim("w"), "w", Image.new("RGB", (8, 8)), {"generator": "default"}))
    s.close()
    (root / "kiosk.sqlite3").write_bytes(b"")  # the store is emptied
    with pytest.raises(ArchiveIdentityError):
        Store(root)
    restore(root)  # the newest backup
    s2 = Store(root)
    assert s2.archive_id == s.archive_id and s2.count_pieces() == 2
    assert [p.id for p in s2.recent_pieces(10)] == [pieces[1].id, pieces[0].id]
    s2.submit("demo", seed=7)
    new = s2.add_piece(s2.claim("w"), "w", Image.new("RGB", (8, 8)), {"generator": "default"})
    assert new.id > max(p.id for p in later), "a restored archive gave out an id an old QR code points at"
    assert list((root).glob("kiosk.sqlite3.replaced-*")), "the replaced database was not kept"
    missing, orphans = s2.file_report()
    assert missing == [] and set(orphans) >= {p.image_path for p in later}


def test_backups_rotate_and_restore_refuses_another_archive(tmp_path, monkeypatch):
    import exhibits.store as store_mod

    s, _ = _archive(tmp_path / "a", 1)
    stamps = iter(f"2026010{i}-000000" for i in range(1, 10))
    monkeypatch.setattr(store_mod.time, "strftime", lambda fmt, t=None: next(stamps))
    for _ in range(5):
        s.backup(keep=3)
    assert [p.name.split("-")[1] for p in list_backups(tmp_path / "a")] == ["20260103", "20260104", "20260105"]
    other = Store(tmp_path / "b")
    foreign = other.backup()
    with pytest.raises(ArchiveIdentityError, match="restore a backup of this archive"):
        restore(tmp_path / "a", foreign)
    bad = tmp_path / "bad.sqlite3"
    bad.write_bytes(b"SQLite format 3\x00" + b"\x00" * 100)
    with pytest.raises(StoreDamagedError, match="integrity_check"):
        restore(tmp_path / "a", bad)


def test_rows_whose_image_is_gone_are_hidden_from_listings_and_reported(tmp_path):
    s, pieces = _archive(tmp_path / "a", 5)
    for p in pieces[1:4]:
        s.path(p.image_path).unlink()
    assert [p.id for p in s.recent_pieces(2)] == [pieces[4].id, pieces[0].id]
    assert [p.id for p in s.recent_pieces(10)] == [pieces[4].id, pieces[0].id]
    assert s.get_piece(pieces[2].id) is not None  # its own page (an old QR code) can still say what happened
    s.path(pieces[4].image_path).unlink()
    assert s.latest_piece_id() == pieces[0].id
    missing, orphans = s.file_report()
    assert [m[0] for m in missing] == [p.id for p in pieces[1:]]
    stray = s.pieces_dir / "stray.png"
    stray.write_bytes(b"x")
    assert s.file_report()[1] == ["pieces/stray.png"]
