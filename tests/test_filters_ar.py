"""AR texture packs: zip integrity, square power-of-two textures within each tool's limits, honest manifests."""
from __future__ import annotations

import hashlib
import io
import json
import zipfile

import pytest
from PIL import Image

from filters import ExportError, export
from filters.ar import TOOLS
from tests.filters_helpers import META, gradient, listing, noise, save_piece

pytestmark = pytest.mark.timeout(60)


def _open_pack(path):
    zf = zipfile.ZipFile(path)
    assert zf.testzip() is None
    manifest = json.loads(zf.read("manifest.json"))
    return zf, manifest


@pytest.mark.parametrize("tool", sorted(TOOLS))
def test_pack_layout_and_manifest(tmp_path, tool):
    spec = TOOLS[tool]
    piece = save_piece(tmp_path / "p.png", gradient(320, 240))
    (path,) = export(tool, piece, META, tmp_path / "out")
    assert path.name == f"piece-7_{tool}.zip"
    zf, manifest = _open_pack(path)
    names = set(zf.namelist())
    assert {"manifest.json", "README.txt"} <= names
    assert manifest["tool"] == spec.tool and manifest["format"] == "kiosk-ar-texture-pack"
    assert manifest["piece"]["seed"] == 1234 and manifest["piece"]["prompt"] == "a doorway into fog | neon:0.5"
    assert manifest["source_image"]["crop"] == "centre square"
    assert "not a project file" in manifest["contents"]
    sizes = []
    for tex in manifest["textures"]:
        data = zf.read(tex["path"])
        assert tex["path"].startswith("textures/")
        assert hashlib.sha256(data).hexdigest() == tex["sha256"] and len(data) == tex["bytes"]
        with Image.open(io.BytesIO(data)) as im:
            w, h = im.size
            assert im.format == {"png": "PNG", "jpg": "JPEG"}[tex["format"]]
        assert w == h == tex["width"] and w & (w - 1) == 0 and w <= spec.max_size
        if spec.max_file_bytes:
            assert len(data) <= spec.max_file_bytes
        sizes.append(w)
    assert tuple(sizes) == spec.sizes
    assert names == {"manifest.json", "README.txt", *(t["path"] for t in manifest["textures"])}
    readme = zf.read("README.txt").decode()
    assert spec.tool in readme and "textures/" in readme


def test_spark_ar_pack_is_png_1024_and_512_and_says_discontinued(tmp_path):
    (path,) = export("sparkar", save_piece(tmp_path / "p.png"), META, tmp_path / "out")
    zf, manifest = _open_pack(path)
    assert sorted(n for n in zf.namelist() if n.startswith("textures/")) == [
        "textures/piece-7_1024.png", "textures/piece-7_512.png"]
    assert manifest["tool_status"].startswith("discontinued")


def test_effect_house_falls_back_to_jpeg_under_1mb(tmp_path):
    # noise does not compress: a 1024 PNG would be ~3 MB, over Effect House's 1 MB limit
    piece = save_piece(tmp_path / "noise.png", noise(512))
    (path,) = export("effecthouse", piece, {}, tmp_path / "out", basename="n")
    zf, manifest = _open_pack(path)
    big = next(t for t in manifest["textures"] if t["width"] == 1024)
    assert big["format"] == "jpg" and big["bytes"] < 1024 * 1024
    with pytest.raises(ExportError, match="over the 1048575 byte limit"):
        export("effecthouse", piece, {}, tmp_path / "out2", image_format="png")
    assert listing(tmp_path / "out2") == []


def test_sizes_option(tmp_path):
    piece = save_piece(tmp_path / "p.png")
    (path,) = export("lensstudio", piece, {}, tmp_path / "out", sizes=[256, 64], basename="s")
    _, manifest = _open_pack(path)
    assert [t["width"] for t in manifest["textures"]] == [256, 64]
    for bad in ([1000], [2048], "512", [], [True]):
        with pytest.raises(ExportError, match="option 'sizes' for Effect House"):
            export("effecthouse", piece, {}, tmp_path / "bad", sizes=bad)
    with pytest.raises(ExportError, match="'image_format' must be one of"):
        export("sparkar", piece, {}, tmp_path / "bad", image_format="webp")
    assert listing(tmp_path / "bad") == []
