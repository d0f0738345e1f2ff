"""GLB exporter: a valid glTF 2.0 binary container, parsed back, with the piece embedded as the baseColor texture."""
from __future__ import annotations

import io
import json
import math
import struct

import numpy as np
import pygltflib
import pytest
from PIL import Image

from filters import ExportError, export
from tests.filters_helpers import META, gradient, listing, save_piece

pytestmark = pytest.mark.timeout(60)

COMPONENTS = {"SCALAR": 1, "VEC2": 2, "VEC3": 3}
DTYPES = {5126: np.float32, 5123: np.uint16}


def _raw_chunks(data: bytes) -> tuple[dict, bytes]:
    """Parse the GLB container by hand (independently of pygltflib)."""
    magic, version, length = struct.unpack_from("<4sII", data)
    assert (magic, version, length) == (b"glTF", 2, len(data))
    json_len, json_type = struct.unpack_from("<I4s", data, 12)
    assert json_type == b"JSON" and json_len % 4 == 0
    doc = json.loads(data[20: 20 + json_len])
    bin_len, bin_type = struct.unpack_from("<I4s", data, 20 + json_len)
    assert bin_type == b"BIN\0" and bin_len % 4 == 0
    start = 28 + json_len
    assert start % 4 == 0 and start + bin_len == len(data)
    return doc, data[start: start + bin_len]


def _accessor(doc: dict, blob: bytes, index: int) -> np.ndarray:
    acc = doc["accessors"][index]
    view = doc["bufferViews"][acc["bufferView"]]
    n = COMPONENTS[acc["type"]]
    arr = np.frombuffer(blob, DTYPES[acc["componentType"]], acc["count"] * n,
                        view.get("byteOffset", 0) + acc.get("byteOffset", 0))
    return arr.reshape(acc["count"], n) if n > 1 else arr


def _load(path):
    data = path.read_bytes()
    doc, blob = _raw_chunks(data)
    gltf = pygltflib.GLTF2.load_from_bytes(data)
    return doc, blob, gltf


def _image_bytes(doc, blob) -> bytes:
    view = doc["bufferViews"][doc["images"][0]["bufferView"]]
    return blob[view["byteOffset"]: view["byteOffset"] + view["byteLength"]]


def test_flat_panel_round_trip(tmp_path):
    src = gradient(200, 100)  # 2:1 piece -> 2:1 panel
    piece = save_piece(tmp_path / "p.png", src)
    (path,) = export("glb", piece, META, tmp_path / "out", texture_px=256, image_format="png", frame_cm=0)
    assert path.name == "piece-7.glb"
    doc, blob, gltf = _load(path)
    assert gltf.asset.version == "2.0"
    prim = gltf.meshes[0].primitives[0]
    assert (prim.attributes.POSITION, prim.attributes.NORMAL, prim.attributes.TEXCOORD_0, prim.indices) == (0, 1, 2, 3)
    assert [a.count for a in gltf.accessors] == [4, 4, 4, 6] + [24, 24, 36]  # the picture, then its board
    pos, nrm, uv, idx = (_accessor(doc, blob, i) for i in range(4))
    assert pos.min(axis=0).tolist() == pytest.approx(gltf.accessors[0].min)
    assert pos.max(axis=0).tolist() == pytest.approx(gltf.accessors[0].max)
    width, height = np.ptp(pos[:, 0]), np.ptp(pos[:, 1])
    assert width == pytest.approx(0.2) and height == pytest.approx(0.1) and pos[:, 1].min() == 0
    assert np.allclose(nrm, [0, 0, 1]) and uv.min() == 0 and uv.max() == 1
    assert idx.max() < len(pos)
    # triangles face +Z (counter-clockwise seen from the front)
    for a, b, c in idx.reshape(-1, 3):
        assert np.cross(pos[b] - pos[a], pos[c] - pos[a])[2] > 0
    # the material samples the embedded piece
    mat = gltf.materials[0]
    assert gltf.textures[mat.pbrMetallicRoughness.baseColorTexture.index].source == 0
    assert mat.pbrMetallicRoughness.metallicFactor == 0 and "KHR_materials_unlit" in gltf.extensionsUsed
    img = _image_bytes(doc, blob)
    assert doc["images"][0]["mimeType"] == "image/png"
    with Image.open(io.BytesIO(img)) as tex:
        assert tex.size == (256, 256)
        expected = np.asarray(src.resize((256, 256), Image.Resampling.LANCZOS)).astype(int)
        assert np.abs(np.asarray(tex.convert("RGB")).astype(int) - expected).max() == 0  # PNG is lossless
    assert doc["asset"]["extras"]["piece"]["title"] == "Doorway 7"


def test_bent_panel_geometry(tmp_path):
    piece = save_piece(tmp_path / "p.png")
    (path,) = export("glb", piece, {}, tmp_path / "out", bend_deg=60, segments=8, width_m=1.0, texture_px=64)
    doc, blob, gltf = _load(path)
    assert [a.count for a in gltf.accessors] == [18, 18, 18, 48]
    pos, nrm, uv, idx = (_accessor(doc, blob, i) for i in range(4))
    bottom = pos[:9]
    arc = np.sum(np.linalg.norm(np.diff(bottom[:, [0, 2]], axis=0), axis=1))
    assert arc == pytest.approx(1.0, rel=0.01)  # the width is kept as arc length
    assert bottom[0, 2] > 0 and bottom[4, 2] == pytest.approx(0) and bottom[-1, 2] > 0  # edges come forward
    assert np.allclose(np.linalg.norm(nrm, axis=1), 1, atol=1e-6)
    assert doc["images"][0]["mimeType"] == "image/jpeg"
    with Image.open(io.BytesIO(_image_bytes(doc, blob))) as tex:
        assert tex.format == "JPEG" and tex.size == (64, 64)
    assert idx.max() == len(pos) - 1
    assert math.isclose(gltf.accessors[3].max[0], 17)


@pytest.mark.parametrize("opts, message", [
    ({"texture_px": 1000}, "'texture_px' must be a power of two"),
    ({"bend_deg": -5}, "'bend_deg' must be >= 0"),
    ({"width_m": 0}, "'width_m' must be > 0"),
    ({"image_format": "gif"}, "'image_format' must be one of 'jpg', 'png'"),
])
def test_bad_options(tmp_path, opts, message):
    with pytest.raises(ExportError, match=message):
        export("glb", save_piece(tmp_path / "p.png"), {}, tmp_path / "out", **opts)
    assert listing(tmp_path / "out") == []
