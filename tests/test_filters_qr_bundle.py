"""QR codes decoded back with OpenCV, the download bundle, and the exporter registry."""
from __future__ import annotations

import json
import xml.etree.ElementTree as ET
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest

import filters
from filters import ExportError, export, export_all, qr_png, qr_svg, register_exporter
from tests.filters_helpers import META, listing, save_piece

pytestmark = pytest.mark.timeout(60)

URL = "http://192.168.1.20:8080/p/7?k=3f9a"


def _decode(image) -> str:
    text, points, _ = cv2.QRCodeDetector().detectAndDecode(np.asarray(image)[:, :, ::-1].copy())
    return text


def test_qr_png_decodes_to_url():
    img = qr_png(URL, 330)
    assert img.size == (330, 330) and img.mode == "RGB"
    assert _decode(img) == URL
    assert _decode(qr_png("https://example.org/" + "x" * 120, 800, error="h")) == "https://example.org/" + "x" * 120


def test_qr_errors():
    with pytest.raises(ExportError, match="'size_px' = 20 is too small for this URL: at least 37 px"):
        qr_png(URL, 20)
    with pytest.raises(ExportError, match="non-empty URL"):
        qr_png("", 200)
    with pytest.raises(ExportError, match="'error' must be one of 'l', 'm', 'q', 'h'"):
        qr_png(URL, 200, error="x")


def test_qr_svg_is_an_svg_document():
    root = ET.fromstring(qr_svg(URL, title="Doorway 7").encode())
    assert root.tag.endswith("svg")
    assert any(el.tag.endswith("path") for el in root.iter())


def test_qr_exporter(tmp_path):
    piece = save_piece(tmp_path / "p.png")
    png, svg = export("qr", piece, {**META, "url": URL}, tmp_path / "out", size_px=400)
    from PIL import Image

    with Image.open(png) as im:
        assert _decode(im.convert("RGB")) == URL
    assert svg.suffix == ".svg"
    with pytest.raises(ExportError, match="needs option 'url'"):
        export("qr", piece, META, tmp_path / "none")
    assert listing(tmp_path / "none") == []


def test_export_all_bundle(tmp_path):
    piece = save_piece(tmp_path / "p.png")
    out = tmp_path / "out"
    paths = export_all(piece, META, out, options={"print": {"size_cm": 5}, "glb": {"texture_px": 128}})
    names = [p.name for p in paths]
    assert names == ["piece-7_print.pdf", "piece-7_print_300dpi.tif", "piece-7_ar_packs.zip", "piece-7.glb",
                     "piece-7.usdz", "piece-7_bundle.zip"]
    assert listing(out) == sorted(names)  # no staging folders or temporaries left
    with zipfile.ZipFile(paths[-1]) as zf:
        assert zf.testzip() is None
        assert sorted(zf.namelist()) == sorted(names[:-1] + ["manifest.json"])
        manifest = json.loads(zf.read("manifest.json"))
        assert zf.read("piece-7.glb") == (out / "piece-7.glb").read_bytes()
        zf.extract("piece-7_ar_packs.zip", tmp_path / "x")
        with zipfile.ZipFile(tmp_path / "x" / "piece-7_ar_packs.zip") as z2:
            assert z2.testzip() is None and z2.namelist()[0] == "README.txt"
    assert [f["path"] for f in manifest["files"]] == names[:-1]
    assert manifest["piece"]["title"] == "Doorway 7"


def test_bundle_only_and_with_qr(tmp_path):
    piece = save_piece(tmp_path / "p.png")
    out = tmp_path / "out"
    paths = export_all(piece, {"url": URL}, out, formats=["glb", "qr"], keep_parts=False, basename="b",
                       options={"glb": {"texture_px": 64}})
    assert [p.name for p in paths] == ["b_bundle.zip"] and listing(out) == ["b_bundle.zip"]
    with zipfile.ZipFile(paths[0]) as zf:
        assert sorted(zf.namelist()) == ["b.glb", "b_qr.png", "b_qr.svg", "manifest.json"]


def test_bundle_failing_late_leaves_nothing(tmp_path):
    piece = save_piece(tmp_path / "p.png")
    out = tmp_path / "out"
    # print, packs and glb are written to the staging folder before qr fails for want of a url
    with pytest.raises(ExportError, match="needs option 'url'"):
        export_all(piece, META, out, formats=["print", "sparkar", "glb", "qr"],
                   options={"print": {"size_cm": 3}, "glb": {"texture_px": 32}})
    assert listing(out) == []


def test_bundle_plan_errors(tmp_path):
    piece = save_piece(tmp_path / "p.png")
    with pytest.raises(ExportError, match="unknown exporter 'pdf'"):
        export_all(piece, {}, tmp_path / "o", formats=["pdf"])
    with pytest.raises(ExportError, match=r"entries \['qr'\] for exporters not in formats"):
        export_all(piece, {}, tmp_path / "o", formats=["glb"], options={"qr": {"url": URL}})
    with pytest.raises(ExportError, match=r"exporter 'glb' does not take option\(s\) \['dpi'\]"):
        export_all(piece, {}, tmp_path / "o", formats=["glb"], options={"glb": {"dpi": 300}})
    assert listing(tmp_path / "o") == []


def test_register_custom_exporter(tmp_path):
    @register_exporter("test-grey")
    def grey(image, meta, stage: Path, *, basename: str, level: int = 128):
        from exhibits.files import write_png

        return [write_png(stage / f"{basename}_grey.png", image.convert("L").point(lambda v: level), meta)]

    assert "test-grey" in filters.names()
    assert filters.exporter_options("test-grey") == {"level": 128}
    (p,) = export("test-grey", save_piece(tmp_path / "p.png"), {"seed": 1}, tmp_path / "out", level=3)
    from PIL import Image

    with Image.open(p) as im:
        assert set(np.unique(np.asarray(im)).tolist()) == {3}
    with pytest.raises(ValueError, match="registered twice"):
        register_exporter("test-grey")(lambda *a, **k: [])
