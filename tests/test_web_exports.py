"""Downloads at the speed of a static file: exports are made by the export queue's own process, a request
gets "being prepared" at once, the file comes with ETag and Range, and the cache has a size bound."""
from __future__ import annotations

import hashlib
import time

import pytest

from exhibits.show import ShowConfig
from kiosk.web import create_app
from tests.web_helpers import make_piece, wait_export

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def web(store):
    pieces = [make_piece(store, f"export {i}", seed=20 + i, size=64) for i in range(2)]
    app = create_app(ShowConfig(data_dir=store.root, exhibits=("demo",)), store, testing=True)
    yield app, app.test_client(), store, pieces
    app.extensions["kiosk"].exports.stop()


def test_a_download_not_yet_made_answers_being_prepared_at_once(web):
    app, c, store, pieces = web
    p = pieces[0]
    t0 = time.perf_counter()
    r = c.get(f"/p/{p.id}/print.pdf")
    first = time.perf_counter() - t0
    assert r.status_code == 202 and r.headers["Retry-After"] == "2"
    page = r.get_data(as_text=True)
    assert "being prepared" in page and 'aria-live="polite"' in page and f"/api/piece/{p.id}/export/print" in page
    j = c.get(f"/p/{p.id}/print.pdf", headers={"Accept": "application/json"})
    assert j.status_code == 202 and j.get_json()["status"] == "preparing"
    deadline = time.monotonic() + 90
    while c.get(f"/api/piece/{p.id}/export/print").get_json()["status"] != "ready":
        assert time.monotonic() < deadline, "the export was never made"
        time.sleep(0.2)
    made = store.export_row(p.id, "print")
    # made in the export process while the request thread had long answered
    assert made["finished_at"] - made["requested_at"] > first
    r = c.get(f"/p/{p.id}/print.pdf")
    assert r.status_code == 200 and r.data.startswith(b"%PDF")
    assert r.headers["ETag"].strip('"') == hashlib.sha256(r.data).hexdigest() == made["sha256"]
    assert r.headers["Accept-Ranges"] == "bytes" and "attachment" in r.headers["Content-Disposition"]
    part = c.get(f"/p/{p.id}/print.pdf", headers={"Range": "bytes=0-99"})
    assert part.status_code == 206 and part.data == r.data[:100]
    assert part.headers["Content-Range"] == f"bytes 0-99/{len(r.data)}"
    assert c.get(f"/p/{p.id}/print.pdf", headers={"If-None-Match": r.headers["ETag"]}).status_code == 304


def test_the_export_cache_is_bounded_least_recently_used_first(web):
    app, c, store, pieces = web
    a, b = pieces
    assert wait_export(c, f"/p/{a.id}/print.pdf").status_code == 200
    size = store.export_row(a.id, "print")["size"]
    app.extensions["kiosk"].exports.cache_bytes = size + size // 2  # room for one print
    assert wait_export(c, f"/p/{b.id}/print.pdf").status_code == 200
    assert store.export_row(a.id, "print") is None and not list((store.root / "exports" / str(a.id)).rglob("*.pdf"))
    assert store.export_row(b.id, "print")["status"] == "ready"
    r = c.get(f"/p/{a.id}/print.pdf")  # pruned: made again on request
    assert r.status_code == 202
    assert wait_export(c, f"/p/{a.id}/print.pdf").status_code == 200


def test_a_file_removed_under_the_cache_is_made_again(web):
    app, c, store, pieces = web
    p = pieces[1]
    assert wait_export(c, f"/p/{p.id}/ar.zip").status_code == 200
    store.path(store.export_row(p.id, "ar")["path"]).unlink()
    assert c.get(f"/p/{p.id}/ar.zip").status_code == 202
    assert wait_export(c, f"/p/{p.id}/ar.zip").data[:2] == b"PK"


def test_a_failed_export_is_503_without_server_paths(web):
    app, c, store, pieces = web
    p = pieces[0]
    store.path(p.image_path).write_bytes(b"not a png at all")
    r = wait_export(c, f"/p/{p.id}/print.pdf")
    body = r.get_data(as_text=True)
    assert r.status_code == 503 and "could not be made" in body and str(store.root) not in body
    row = store.export_row(p.id, "print")
    assert row["status"] == "failed" and row["error"]  # the reason is kept for the staff
    assert c.get(f"/api/piece/{p.id}/export/print").get_json()["status"] == "failed"


def test_glb_models_come_through_the_same_queue(web):
    app, c, store, pieces = web
    p = pieces[0]
    assert c.get(f"/p/{p.id}/model.glb").status_code == 202
    r = wait_export(c, f"/p/{p.id}/model.glb")
    assert r.status_code == 200 and r.data[:4] == b"glTF" and r.headers["ETag"]
    assert r.headers["Content-Disposition"].endswith("-model.glb")


def test_pruning_makes_room_before_a_new_file_is_announced(store):
    """The bound holds at every moment a phone can see: room for a new file is made before it is ready."""
    ids = [make_piece(store, f"prune {i}", seed=40 + i, size=32).id for i in range(3)]
    for n, pid in enumerate(ids[:2]):
        store.request_export(pid, "print")
        assert store.claim_export()["piece_id"] == pid
        store.finish_export(pid, "print", path=f"exports/{pid}/print/x.pdf", size=100, sha256="0" * 64)
        time.sleep(0.01)  # distinct access times
    store.touch_export(ids[0], "print", every=0)  # the older file was downloaded since: the newer one is LRU
    assert store.exports_to_prune(250) == []
    assert [r["piece_id"] for r in store.exports_to_prune(250, incoming=100)] == [ids[1]]
    assert [r["piece_id"] for r in store.exports_to_prune(250, incoming=160)] == [ids[1], ids[0]]
    # without a newcomer the most recent file is kept even when it alone is over the bound
    assert [r["piece_id"] for r in store.exports_to_prune(50)] == [ids[1]]
