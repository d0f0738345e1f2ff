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


def _shot(page, name, tmp_path):
    """Screenshots go to $KIOSK_SCREENS_DIR (docs/screens when refreshing the README's pictures)."""
    import os
    from pathlib import Path

    out = Path(os.environ.get("KIOSK_SCREENS_DIR") or tmp_path)
    out.mkdir(parents=True, exist_ok=True)
    page.wait_for_timeout(150)
    page.screenshot(path=str(out / name))


def _measured(store, seconds, n=3):
    for i in range(n):
        store.submit("doorways", prompt_text="measured", source="playlist", priority=99)
        job = store.claim("w", exhibits=["doorways"])
        store.add_piece(job, "w", Image.new("RGB", (48, 24), (30 + 40 * i, 60, 90)),
                        {"generator": "vqgan_clip", "label": "VQGAN+CLIP", "render_seconds": seconds})


def test_phone_realm_form_mood_picker_wait_my_pieces_and_a_held_prompt_approved(store, tmp_path):
    from exhibits.show import ShowConfig as Cfg
    from kiosk.web.screenshots import DESKTOP, PHONE

    require_chromium()
    for i in range(3):
        make_piece(store, f"earlier piece {i}", seed=30 + i, size=96)
    _measured(store, 150.0)
    cfg = Cfg(data_dir=store.root, exhibits=("doorways", "demo"), staff_password="a long staff password",
              prompt_rate_limit="100 per minute")
    app = create_app(cfg, store)
    app.config["KIOSK_POLL_MS"] = 300
    with live_server(app) as base, chromium(**PHONE) as ctx:
        page = ctx.new_page()
        page.goto(base + "/submit")
        # tap targets: nothing a thumb needs is under 44 px tall
        for sel in (".brand", ".top nav a", "button[type=submit]", "label.choice"):
            for box in [el.bounding_box() for el in page.query_selector_all(sel)]:
                assert box and box["height"] >= 44, (sel, box)
        # Doorways: fill in the template
        page.check('input[name=exhibit][value="doorways"]')
        assert page.is_visible(".realm-panel") and not page.is_visible(".mood-panel")
        page.fill("#realm-left-doorways", "Ocean")
        page.fill("#realm-right-doorways", "Glass Desert")
        _shot(page, "phone-realm-form.png", tmp_path)
        page.tap("button[type=submit]")
        page.wait_for_url("**/job/*")
        assert "Ocean / Glass Desert" in page.inner_text("h1")
        # the wait estimate from the measured render times (150 s per Doorways piece)
        assert "Ready in about 3 minutes" in page.inner_text("#wait")  # the tap-free queue: 150 s own + 0 ahead
        _shot(page, "phone-wait.png", tmp_path)

        # Strange Attractions-style mood picker (the demo exhibit has a sigma range)
        page.goto(base + "/submit")
        page.check('input[name=exhibit][value="demo"]')
        assert page.is_visible(".mood-panel") and not page.is_visible(".realm-panel")
        page.fill("#mood-demo", "92")
        page.dispatch_event("#mood-demo", "input")
        assert page.inner_text("#mood-label-demo") == "Mood: wild"
        _shot(page, "phone-mood.png", tmp_path)
        page.tap("button[type=submit]")
        page.wait_for_url("**/job/*")
        mood_job = store.jobs(source="visitor")[-1]
        assert mood_job.params["mood"] == 92 and mood_job.params["sigma"] == pytest.approx(0.5 + 2.5 * 0.92)

        # the counter counts what the server counts (code points after NFC and whitespace folding)
        page.goto(base + "/submit")
        page.check('input[name=exhibit][value="demo"]')
        text = "e\u0301 " * 40 + "👨‍👩‍👧   " * 20 + "x" * 41
        page.fill("#prompt", text)
        shown = int(page.inner_text("#count"))
        assert "too many" in page.inner_text("#over")
        page.tap("button[type=submit]")
        assert f"is {shown} characters long" in page.inner_text(".error")

        # a prompt the word list flags is held; the visitor is told; the staff approve it
        page.goto(base + "/submit")
        page.check('input[name=exhibit][value="demo"]')
        page.fill("#prompt", "a sh1t storm over the sea")
        page.tap("button[type=submit]")
        page.wait_for_url("**/job/*")
        assert "waiting for a member of staff" in page.inner_text("#status")
        _shot(page, "phone-held.png", tmp_path)
        held = store.jobs(["held"])[0]

        staff_browser = ctx.browser.new_context(**DESKTOP)
        staff = staff_browser.new_page()
        staff.goto(base + "/staff/")
        staff.fill("#password", "a long staff password")
        staff.click("button[type=submit]")
        staff.wait_for_url("**/staff/")
        assert "held: matched the word list: 'shit'" in staff.inner_text(".table .held-reason")
        _shot(staff, "staff-held.png", tmp_path)
        staff.click(f'form[action="/staff/job/{held.id}/approve"] button')
        staff.wait_for_url("**/staff/")
        staff_browser.close()
        page.wait_for_selector('#status[data-status="queued"]', timeout=10_000)

        # on screen: the page tells the visitor to look up
        running = None
        while running is None or running.id != held.id:
            if running is not None:
                store.add_piece(running, "w", Image.new("RGB", (32, 32), "teal"), {"generator": "default"})
            running = store.claim("w")
        page.wait_for_selector("#onscreen:not([hidden])", timeout=10_000)
        assert "Look at the screen" in page.inner_text("#onscreen")

        # my pieces: everything this phone sent, newest first
        page.goto(base + "/mine")
        items = page.locator(".mine-prompt").all_inner_texts()
        assert items[0] == "a sh1t storm over the sea" and "Ocean / Glass Desert" in items
        _shot(page, "phone-mine.png", tmp_path)
    app.extensions["kiosk"].exports.stop()
