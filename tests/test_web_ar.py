"""The "View in AR" page: model-viewer served by the app itself, the framed picture's GLB and USDZ, offline in a phone
browser, and the desktop-tool packs moved to the staff pages."""
from __future__ import annotations

import io
import re
import zipfile
from pathlib import Path

import numpy as np
import pytest

from exhibits.show import ShowConfig
from kiosk.web import create_app
from tests.filters_helpers import gltf_validate
from tests.test_filters_3d import red_over_blue
from tests.web_helpers import chromium, live_server, make_piece, require_chromium, wait_export

pytestmark = pytest.mark.timeout(240)
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def ar_app(store):
    piece = make_piece(store, "a doorway to the ocean realm", seed=4, image=red_over_blue(256))
    app = create_app(ShowConfig(data_dir=store.root, exhibits=("demo",)), store, testing=True)
    return app, store, piece


def test_ar_page_offers_the_models_and_no_cdn(ar_app, tmp_path):
    app, store, piece = ar_app
    c = app.test_client()
    first = c.get(f"/p/{piece.id}/ar")  # the export queue makes both models first
    assert first.status_code == 202 and f'data-url="/p/{piece.id}/ar"' in first.get_data(as_text=True)
    r = wait_export(c, f"/p/{piece.id}/ar")
    assert r.status_code == 200
    html = r.get_data(as_text=True)
    assert '<model-viewer id="ar-model"' in html
    assert f'src="/p/{piece.id}/model.glb"' in html and f'ios-src="/p/{piece.id}/model.usdz"' in html
    assert 'ar-modes="scene-viewer quick-look webxr"' in html and 'ar-scale="fixed"' in html
    assert 'src="/vendor/model-viewer.min.js"' in html
    assert not re.search(r"""(src|href)=["']https?://""", html)  # nothing from another host
    js = c.get("/vendor/model-viewer.min.js")
    assert js.status_code == 200 and js.mimetype == "text/javascript" and b"customElements.define(\"model-viewer\"" in js.data.replace(b"'", b"\"")
    assert c.get("/vendor/three.js").status_code == 404
    glb = c.get(f"/p/{piece.id}/model.glb")
    assert glb.status_code == 200 and glb.mimetype == "model/gltf-binary" and glb.data[:4] == b"glTF"
    assert "attachment" not in glb.headers.get("Content-Disposition", "")
    (tmp_path / "m.glb").write_bytes(glb.data)
    assert gltf_validate(tmp_path / "m.glb")["issues"]["numErrors"] == 0
    usdz = c.get(f"/p/{piece.id}/model.usdz")
    assert usdz.status_code == 200 and usdz.mimetype == "model/vnd.usdz+zip" and usdz.data[:2] == b"PK"


def test_ar_page_without_the_viewer_still_offers_the_files(ar_app, tmp_path):
    app, _, piece = ar_app
    app.config["KIOSK_VENDOR_DIR"] = str(tmp_path / "nothing")
    c = app.test_client()
    html = wait_export(c, f"/p/{piece.id}/ar").get_data(as_text=True)
    assert "<model-viewer" not in html and "not installed" in html and f"/p/{piece.id}/model.usdz" in html
    r = c.get("/vendor/model-viewer.min.js")
    assert r.status_code == 404 and "npm ci --prefix vendor" in r.get_data(as_text=True)


def test_staff_get_the_desktop_packs_with_a_readme_on_top(ar_app):
    app, _, piece = ar_app
    c = app.test_client()
    assert "ar.zip" not in c.get(f"/p/{piece.id}").get_data(as_text=True)  # not offered to phones
    r = wait_export(c, f"/p/{piece.id}/ar.zip")
    assert r.status_code == 200 and "attachment" in r.headers["Content-Disposition"]
    with zipfile.ZipFile(io.BytesIO(r.data)) as zf:
        names = zf.namelist()
        assert names == ["README.txt", f"piece-{piece.id}_effecthouse.zip", f"piece-{piece.id}_lensstudio.zip",
                         f"piece-{piece.id}_sparkar.zip"]
        readme = zf.read("README.txt").decode()
        assert "Effect House" in readme and "Import" in readme and "View in AR" in readme
        assert "closed the Spark AR platform in January 2025" in readme
        for inner in names[1:]:
            with zipfile.ZipFile(io.BytesIO(zf.read(inner))) as z2:
                assert z2.namelist()[0].startswith("textures/") and "README.txt" in z2.namelist()


def test_phone_shows_the_framed_picture_offline_the_right_way_up(ar_app):
    """Every request outside the app is refused: model-viewer, the GLB and its texture all come from the app."""
    require_chromium()
    app, _, piece = ar_app
    with live_server(app) as base, chromium() as ctx:
        outside: list[str] = []

        def only_local(route):
            url = route.request.url
            if url.startswith(base) or url.startswith(("data:", "blob:")):
                route.continue_()
            else:
                outside.append(url)
                route.abort()

        ctx.route("**/*", only_local)
        page = ctx.new_page()
        page.set_default_timeout(90_000)  # the machine may be busy; nothing here waits on the network
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(f"{base}/p/{piece.id}")
        page.tap("text=View in AR")
        page.wait_for_url(f"**/p/{piece.id}/ar")  # "being prepared" first, then the viewer by itself
        page.wait_for_selector("#ar-model", state="attached", timeout=60_000)
        page.wait_for_function("() => { const m = document.querySelector('#ar-model');"
                               " return m && m.loaded && m.modelIsVisible; }", timeout=60_000)
        page.wait_for_timeout(500)  # one more frame after the first render
        dims = page.evaluate("() => { const d = document.querySelector('#ar-model').getDimensions();"
                             " return [d.x, d.y, d.z]; }")
        assert dims[0] == pytest.approx(0.24, abs=1e-3) and dims[1] == pytest.approx(0.24, abs=1e-3)  # 20 cm + frame
        shot = page.screenshot()
        assert outside == [] and errors == [], (outside, errors)
        box = page.locator("#ar-model").bounding_box()
    from PIL import Image

    scale = 2  # the phone context's device pixel ratio
    img = Image.open(io.BytesIO(shot)).convert("RGB")
    region = np.asarray(img.crop(tuple(int(v * scale) for v in (box["x"], box["y"], box["x"] + box["width"],
                                                                  box["y"] + box["height"]))), np.int32)
    red = (region[..., 0] > 120) & (region[..., 2] < 80)
    blue = (region[..., 2] > 120) & (region[..., 0] < 80)
    assert red.sum() > 500 and blue.sum() > 500, "the picture is not visible in the viewer"
    assert np.nonzero(red)[0].mean() < np.nonzero(blue)[0].mean()  # red (the image's top) is above blue
