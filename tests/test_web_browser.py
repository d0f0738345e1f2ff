"""A phone (headless Chromium, 390x844) against a real waitress server on 127.0.0.1."""
from __future__ import annotations

import pytest
from PIL import Image

from exhibits.show import ShowConfig
from kiosk.web import create_app
from tests.web_helpers import chromium, live_server, make_piece, require_chromium

pytestmark = pytest.mark.timeout(120)


def test_visitor_browses_downloads_submits_and_watches_the_status(store, tmp_path):
    require_chromium()
    pieces = [make_piece(store, f"browser piece {i}", seed=7 + i, size=96) for i in range(2)]
    app = create_app(ShowConfig(data_dir=store.root, exhibits=("demo",)), store)
    app.config["KIOSK_POLL_MS"] = 400  # keep the test short; the page's default is 2 s
    with live_server(app) as base, chromium() as ctx:
        page = ctx.new_page()
        page.goto(base + "/")
        assert page.locator(".badge").first.inner_text().startswith("Weights-free")
        page.tap(f'a[href="/p/{pieces[0].id}"]')
        page.wait_for_url(f"**/p/{pieces[0].id}")
        assert "browser piece 0" in page.inner_text("h1")
        with page.expect_download() as dl:
            page.tap("text=Download PNG")
        target = tmp_path / dl.value.suggested_filename
        dl.value.save_as(target)
        assert target.name == f"weights-free-demo-{pieces[0].id}-seed7.png"
        assert target.read_bytes() == store.path(pieces[0].image_path).read_bytes()

        page.goto(base + "/submit")
        page.fill("#prompt", "bad:|prompt")
        page.tap("button[type=submit]")
        assert "ends with ':'" in page.inner_text(".error")
        page.fill("#prompt", "a lighthouse in a storm of moths")
        page.tap("button[type=submit]")
        page.wait_for_url("**/job/*")
        assert page.inner_text("#position") == "1"
        assert "Next in line" in page.inner_text("#status")

        job = store.claim("browser-worker")
        assert job is not None and job.prompt_text == "a lighthouse in a storm of moths"
        store.heartbeat(job.id, "browser-worker", step=2, total=4)
        page.wait_for_selector('#status[data-status="running"]', timeout=10_000)
        assert "On screen now" in page.inner_text("#status")
        piece = store.add_piece(job, "browser-worker", Image.new("RGB", (32, 32), "navy"),
                                {"generator": "default", "label": "Weights-free pattern network"})
        page.wait_for_selector('#status[data-status="done"]', timeout=10_000)
        assert page.is_visible("#piece-link")
        page.tap("#piece-link")
        page.wait_for_url(f"**/p/{piece.id}")
        assert page.evaluate("document.querySelector('.piece img').naturalWidth") == 32
