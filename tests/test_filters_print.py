"""Print exporter: PDF boxes in points, effective DPI, mirrored bleed, raster DPI, and errors that leave nothing."""
from __future__ import annotations

import math

import numpy as np
import pikepdf
import pytest
from PIL import Image

from exhibits.files import read_png_meta
from filters import ExportError, export
from filters.printing import MARK_LEN_MM, SLUG_MM, mm_to_pt
from tests.filters_helpers import META, gradient, icc_description, image_icc, listing, pdf_fonts, save_piece

pytestmark = pytest.mark.timeout(60)

CM20_PT = 20 / 2.54 * 72  # 566.93 pt


def _box(page, key):
    return [float(v) for v in page.obj[key]]


def _image_px(page) -> tuple[int, int]:
    (xobj,) = list(page.get_images().values())
    return int(xobj.Width), int(xobj.Height)


@pytest.fixture(scope="module")
def default_export(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("print")
    piece = save_piece(tmp / "in" / "p.png", gradient(300, 200))  # non-square: covered, centre-cropped
    out = export("print", piece, META, tmp / "out")
    return tmp / "out", out


def test_default_pdf_is_20cm_with_bleed_and_marks(default_export):
    out_dir, paths = default_export
    assert [p.name for p in paths] == ["piece-7_print.pdf", "piece-7_print_300dpi.tif"]
    with pikepdf.open(paths[0]) as pdf:
        art, caption = pdf.pages
        trim, bleed, media = _box(art, "/TrimBox"), _box(art, "/BleedBox"), _box(art, "/MediaBox")
        assert trim[2] - trim[0] == pytest.approx(566.93, abs=0.01)
        assert trim[3] - trim[1] == pytest.approx(CM20_PT, abs=0.01)
        assert bleed[2] - bleed[0] == pytest.approx(CM20_PT + 2 * mm_to_pt(3), abs=0.01)
        assert media[2] - media[0] == pytest.approx(CM20_PT + 2 * (mm_to_pt(3) + mm_to_pt(SLUG_MM)), abs=0.01)
        # the image spans the bleed box at >= 300 dpi effective
        px_w, px_h = _image_px(art)
        assert px_w / ((bleed[2] - bleed[0]) / 72) >= 300
        assert px_h / ((bleed[3] - bleed[1]) / 72) >= 300
        # crop marks: 8 strokes, each MARK_LEN_MM long, all outside the bleed box
        ops = pikepdf.parse_content_stream(art)
        moves = [[float(v) for v in o.operands] for o in ops if str(o.operator) == "m"]
        lines = [[float(v) for v in o.operands] for o in ops if str(o.operator) == "l"]
        assert len(moves) == len(lines) == 8
        for (x1, y1), (x2, y2) in zip(moves, lines):
            assert math.hypot(x2 - x1, y2 - y1) == pytest.approx(mm_to_pt(MARK_LEN_MM), abs=0.01)
            for x, y in ((x1, y1), (x2, y2)):
                assert not (bleed[0] < x < bleed[2] and bleed[1] < y < bleed[3])
        # caption page: the same media, trim and bleed boxes as the picture, with text drawn
        for key in ("/MediaBox", "/TrimBox", "/BleedBox"):
            assert _box(caption, key) == pytest.approx(_box(art, key), abs=1e-3)
        assert any(str(o.operator) in ("Tj", "TJ") for o in pikepdf.parse_content_stream(caption))
        assert str(pdf.docinfo["/Title"]) == "Doorway 7"
        assert str(pdf.docinfo["/Subject"]) == "a doorway into fog | neon:0.5"


def test_raster_has_dpi_meta_and_mirrored_bleed(tmp_path):
    piece = save_piece(tmp_path / "in" / "p.png", gradient(300, 200))
    _, png = export("print", piece, META, tmp_path / "out", raster="png")
    with Image.open(png) as im:
        dpi = im.info["dpi"]
        arr = np.asarray(im.convert("RGB"))
    assert dpi[0] == pytest.approx(300, abs=0.01) and dpi[1] == pytest.approx(300, abs=0.01)
    trim_px, bleed_px = math.ceil(20 / 2.54 * 300), math.ceil(3 / 25.4 * 300)
    assert arr.shape[:2] == (trim_px + 2 * bleed_px,) * 2
    # the bleed mirrors the picture's edge, so the trim shows the whole piece
    b = bleed_px
    assert np.array_equal(arr[:b], arr[b: 2 * b][::-1])
    assert np.array_equal(arr[:, -b:], arr[:, -2 * b: -b][:, ::-1])
    assert read_png_meta(png)["seed"] == 1234


def test_options_size_no_bleed_no_marks_tiff(tmp_path):
    piece = save_piece(tmp_path / "p.png")
    pdf, tif = export("print", piece, {"title": "t"}, tmp_path / "out", size_cm=5, bleed_mm=0, crop_marks=False,
                      caption="none", raster="tiff", dpi=300, basename="small")
    assert (pdf.name, tif.name) == ("small_print.pdf", "small_print_300dpi.tif")
    with pikepdf.open(pdf) as doc:
        assert len(doc.pages) == 1
        media = _box(doc.pages[0], "/MediaBox")
        assert media[2] == pytest.approx(5 / 2.54 * 72, abs=0.01)
        assert _image_px(doc.pages[0])[0] == math.ceil(5 / 2.54 * 300)
    with Image.open(tif) as im:
        assert im.format == "TIFF"
        assert im.info["dpi"][0] == pytest.approx(300)
        assert im.size == (math.ceil(5 / 2.54 * 300),) * 2


def test_caption_below_uses_slug(tmp_path):
    piece = save_piece(tmp_path / "p.png")
    (pdf,) = export("print", piece, META, tmp_path / "out", size_cm=4, width_cm=6, crop_marks=False,
                    caption="below", raster="none")
    with pikepdf.open(pdf) as doc:
        assert len(doc.pages) == 1
        trim, media = _box(doc.pages[0], "/TrimBox"), _box(doc.pages[0], "/MediaBox")
        assert trim[2] - trim[0] == pytest.approx(6 / 2.54 * 72, abs=0.01)
        assert trim[3] - trim[1] == pytest.approx(4 / 2.54 * 72, abs=0.01)
        assert trim[1] > 0 and media[3] > trim[3]
        assert any(str(o.operator) in ("Tj", "TJ") for o in pikepdf.parse_content_stream(doc.pages[0]))


@pytest.mark.parametrize(
    "opts, message",
    [
        ({"size_cm": -1}, "'size_cm' must be > 0"),
        ({"size_cm": 0}, "'size_cm' must be > 0"),
        ({"width_cm": "20"}, "'width_cm' must be a number"),
        ({"dpi": 300.5}, "'dpi' must be an integer"),
        ({"bleed_mm": float("nan")}, "'bleed_mm' must be a number"),
        ({"caption": "side"}, "'caption' must be one of 'page', 'below', 'none'"),
        ({"raster": "jpg"}, "'raster' must be one of"),
        ({"crop_marks": "yes"}, "'crop_marks' must be true or false"),
        ({"colour": "red"}, r"does not take option\(s\) \['colour'\]; allowed: bleed_mm, caption"),
    ],
)
def test_bad_options_are_named_and_leave_nothing(tmp_path, opts, message):
    piece = save_piece(tmp_path / "p.png")
    out = tmp_path / "out"
    with pytest.raises(ExportError, match=message):
        export("print", piece, META, out, **opts)
    assert listing(out) == []


def test_bad_input_files_are_named_and_leave_nothing(tmp_path):
    out = tmp_path / "out"
    empty = tmp_path / "empty.png"
    empty.touch()
    text = tmp_path / "notes.png"
    text.write_text("not a picture")
    truncated = tmp_path / "cut.png"
    full = save_piece(tmp_path / "full.png")
    truncated.write_bytes(full.read_bytes()[:200])
    cases = [
        (tmp_path / "missing.png", "does not exist"),
        (tmp_path, "is not a file"),
        (empty, r"is empty \(0 bytes\)"),
        (text, "is not an image file"),
        (truncated, "could not be decoded"),
    ]
    for path, message in cases:
        with pytest.raises(ExportError, match=message) as info:
            export("print", path, META, out)
        assert str(path) in str(info.value)
    assert listing(out) == []


def test_unknown_exporter_lists_known(tmp_path):
    with pytest.raises(ExportError, match="unknown exporter .pdf.; known exporters: ar_packs, bundle, effecthouse, effecthouse_sequence, glb"):
        export("pdf", save_piece(tmp_path / "p.png"), {}, tmp_path / "out")


def test_jpeg_embedding_option(tmp_path):
    piece = save_piece(tmp_path / "p.png")
    (pdf,) = export("print", piece, META, tmp_path / "out", size_cm=4, raster="none", jpeg_quality=90)
    with pikepdf.open(pdf) as doc:
        (xobj,) = list(doc.pages[0].get_images().values())
        filters_used = xobj.Filter if isinstance(xobj.Filter, pikepdf.Array) else [xobj.Filter]
        assert [str(f) for f in filters_used] == ["/DCTDecode"]
        assert int(xobj.Width) == math.ceil(4 / 2.54 * 300) + 2 * math.ceil(3 / 25.4 * 300)
    with pytest.raises(ExportError, match="'jpeg_quality' must be between 50 and 100"):
        export("print", piece, META, tmp_path / "bad", jpeg_quality=20)
    assert listing(tmp_path / "bad") == []


def test_pdf_is_pdfa_with_srgb_intent_embedded_fonts_and_real_dates(default_export):
    import time
    from datetime import datetime

    _, paths = default_export
    with pikepdf.open(paths[0]) as pdf:
        (intent,) = pdf.Root.OutputIntents
        assert str(intent.S) == "/GTS_PDFA1" and str(intent.OutputConditionIdentifier) == "sRGB IEC61966-2.1"
        assert int(intent.DestOutputProfile.N) == 3
        assert "sRGB" in icc_description(intent.DestOutputProfile.read_bytes())
        meta = pdf.open_metadata()
        assert (meta["pdfaid:part"], meta["pdfaid:conformance"]) == ("2", "B")
        assert meta["dc:title"] == "Doorway 7"
        fonts = pdf_fonts(pdf)
        assert fonts and all(fonts.values()), fonts  # no Helvetica by reference: every font program is inside
        assert pdf.pdf_version >= "1.6" and len(pdf.trailer.ID) == 2
        created = str(pdf.docinfo.CreationDate)
        made = datetime.strptime(created[2:16], "%Y%m%d%H%M%S")
        assert abs(time.time() - made.replace(tzinfo=__import__("datetime").timezone.utc).timestamp()) < 600
        assert meta["xmp:CreateDate"].startswith(made.strftime("%Y-%m-%dT%H:%M:%S"))
        assert not str(created).startswith("D:2000")
        # no DeviceCMYK colour beside an RGB output intent
        for page in pdf.pages:
            ops = {str(o.operator) for o in pikepdf.parse_content_stream(page)}
            assert not ops & {"k", "K"}


def test_caption_page_numbers_as_on_the_web_and_honest_resolution(tmp_path):
    from pypdf import PdfReader

    piece = save_piece(tmp_path / "p.png", gradient(256, 256))
    (pdf,) = export("print", piece, {**META, "sigma": 1.9995}, tmp_path / "out", size_cm=10, raster="none")
    text = " ".join(PdfReader(pdf).pages[1].extract_text().split())
    assert "sigma 2.00" in text and "1.9995" not in text
    # 256 px over 10 cm: 65 ppi of the piece's own detail, enlarged to 300 ppi, and it says how
    assert "256 \u00d7 256 px, 65 ppi of real detail" in text
    assert "Lanczos resampling with sharpening" in text and "4.62\u00d7" in text
    assert "interpolated" in text


def test_every_raster_carries_srgb(tmp_path, default_export):
    import io
    import zipfile

    _, paths = default_export
    assert "sRGB" in image_icc(paths[1])  # the print-shop TIFF
    with Image.open(paths[1]) as tif:
        assert tif.info["compression"] == "tiff_lzw" and tif.info["dpi"][0] == pytest.approx(300)
        assert json_meta(tif)["print"]["upscale"]["source_px"] == [200, 200]
    piece = save_piece(tmp_path / "p.png")
    _, png = export("print", piece, META, tmp_path / "png", size_cm=4, raster="png")
    assert "sRGB" in image_icc(png)
    (pdf,) = export("print", piece, META, tmp_path / "jpg", size_cm=4, raster="none", jpeg_quality=90)
    with pikepdf.open(pdf) as doc:
        (xobj,) = list(doc.pages[0].get_images().values())
        assert "sRGB" in image_icc(xobj.read_raw_bytes())
    for tool in ("sparkar", "lensstudio", "effecthouse"):
        (pack,) = export(tool, piece, META, tmp_path / tool)
        with zipfile.ZipFile(pack) as zf:
            textures = [n for n in zf.namelist() if n.startswith("textures/")]
            assert textures and all("sRGB" in image_icc(zf.read(n)) for n in textures)
    (glb,) = export("glb", piece, META, tmp_path / "glb", texture_px=64)
    data = glb.read_bytes()
    start = data.index(b"\xff\xd8\xff")  # the JPEG texture inside the binary chunk
    assert "sRGB" in image_icc(io.BytesIO(data[start:]).read())


def json_meta(tif) -> dict:
    import json

    return json.loads(tif.tag_v2[270])
