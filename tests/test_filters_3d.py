"""GLB and USDZ for AR on phones: a framed 20 x 20 cm picture at true size, the right way up, passing the Khronos
glTF validator and usd-core's validators."""
from __future__ import annotations

import io
import struct
import zipfile

import numpy as np
import pygltflib
import pytest
from PIL import Image

from filters import ExportError, export
from tests.filters_helpers import META, gltf_validate, image_icc, listing, save_piece, usd_validate

pytestmark = pytest.mark.timeout(60)


def red_over_blue(size: int = 128) -> Image.Image:
    """Red top half, blue bottom half: which way up is unmistakable."""
    arr = np.zeros((size, size, 3), np.uint8)
    arr[: size // 2, :, 0] = 220
    arr[size // 2:, :, 2] = 220
    return Image.fromarray(arr, "RGB")


def _accessor(gltf: pygltflib.GLTF2, blob: bytes, index: int) -> np.ndarray:
    acc = gltf.accessors[index]
    view = gltf.bufferViews[acc.bufferView]
    n = {"SCALAR": 1, "VEC2": 2, "VEC3": 3}[acc.type]
    dtype = np.float32 if acc.componentType == 5126 else np.uint16
    arr = np.frombuffer(blob, dtype, acc.count * n, view.byteOffset + (acc.byteOffset or 0))
    return arr.reshape(acc.count, n) if n > 1 else arr


def test_glb_is_a_framed_20cm_picture_that_validates(tmp_path):
    piece = save_piece(tmp_path / "p.png", red_over_blue())
    (path,) = export("glb", piece, META, tmp_path / "out", texture_px=128)
    report = gltf_validate(path)
    assert report["issues"]["numErrors"] == report["issues"]["numWarnings"] == 0, report["issues"]["messages"]
    assert report["issues"]["numInfos"] == 0, report["issues"]["messages"]
    gltf = pygltflib.GLTF2.load(str(path))
    blob = gltf.binary_blob()
    materials = [m.name for m in gltf.materials]
    prims = {materials[p.material]: p for p in gltf.meshes[0].primitives}
    assert set(prims) == {"piece", "frame", "back"}
    pic = _accessor(gltf, blob, prims["piece"].attributes.POSITION)
    uv = _accessor(gltf, blob, prims["piece"].attributes.TEXCOORD_0)
    assert np.ptp(pic[:, 0]) == pytest.approx(0.20, abs=1e-6) and np.ptp(pic[:, 1]) == pytest.approx(0.20, abs=1e-6)
    frame = _accessor(gltf, blob, prims["frame"].attributes.POSITION)
    assert np.ptp(frame[:, 0]) == pytest.approx(0.24, abs=1e-6) and frame[:, 1].min() == pytest.approx(0)
    assert frame[:, 2].min() == pytest.approx(0) and pic[:, 2].min() > 0  # the back on the wall, the picture in front
    assert pic[:, 2].max() < frame[:, 2].max()  # recessed behind the frame's front
    # the right way up: glTF's v = 0 is the image's top row, and it sits at the top of the picture
    top = pic[:, 1] == pic[:, 1].max()
    assert np.all(uv[top, 1] == 0) and np.all(uv[~top, 1] == 1)
    view = gltf.bufferViews[gltf.images[0].bufferView]
    with Image.open(io.BytesIO(blob[view.byteOffset: view.byteOffset + view.byteLength])) as tex:
        arr = np.asarray(tex.convert("RGB"))
        assert arr[5, 64, 0] > 180 and arr[-5, 64, 2] > 180  # red at v = 0 (top), blue at v = 1
    assert "sRGB" in image_icc(blob[view.byteOffset: view.byteOffset + view.byteLength])


def test_frame_and_bend_do_not_mix(tmp_path):
    piece = save_piece(tmp_path / "p.png")
    with pytest.raises(ExportError, match="'frame_cm' = 2 needs a flat picture; it cannot go with 'bend_deg' = 30"):
        export("glb", piece, {}, tmp_path / "out", bend_deg=30, frame_cm=2)
    with pytest.raises(ExportError, match="'frame_cm' must be >= 0"):
        export("usdz", piece, {}, tmp_path / "out", frame_cm=-1)
    assert listing(tmp_path / "out") == []


def test_usdz_for_quick_look_validates_and_stands_right(tmp_path):
    from pxr import Usd, UsdGeom, UsdShade

    piece = save_piece(tmp_path / "p.png", red_over_blue())
    (path,) = export("usdz", piece, META, tmp_path / "out", texture_px=128)
    assert path.name == "piece-7.usdz"
    assert usd_validate(path) == []
    # ARKit's package layout: uncompressed, the layer first, every file's data 64-byte aligned
    data = path.read_bytes()
    with zipfile.ZipFile(path) as zf:
        infos = zf.infolist()
        assert infos[0].filename.endswith(".usdc")
        (texture,) = [i.filename for i in infos[1:]]  # usd-core's ARKit packer may move it into a folder of its own
        assert texture.endswith("piece.jpg")
        for info in infos:
            assert info.compress_type == zipfile.ZIP_STORED
            name_len, extra_len = struct.unpack_from("<HH", data, info.header_offset + 26)
            assert (info.header_offset + 30 + name_len + extra_len) % 64 == 0
        tex = zf.read(texture)
    stage = Usd.Stage.Open(str(path))
    assert UsdGeom.GetStageUpAxis(stage) == "Y" and UsdGeom.GetStageMetersPerUnit(stage) == 1.0
    assert stage.GetDefaultPrim().GetPath() == "/Root"
    mesh = UsdGeom.Mesh(stage.GetPrimAtPath("/Root/picture"))
    pts = np.asarray(mesh.GetPointsAttr().Get())
    st = np.asarray(UsdGeom.PrimvarsAPI(mesh).GetPrimvar("st").Get())
    assert np.ptp(pts[:, 0]) == pytest.approx(0.20, abs=1e-6) and np.ptp(pts[:, 1]) == pytest.approx(0.20, abs=1e-6)
    frame = np.asarray(UsdGeom.Mesh(stage.GetPrimAtPath("/Root/frame")).GetPointsAttr().Get())
    assert np.ptp(frame[:, 0]) == pytest.approx(0.24, abs=1e-6) and frame[:, 1].min() == pytest.approx(0)
    # USD's t = 1 is the image's top row; the top vertices carry it
    top = pts[:, 1] == pts[:, 1].max()
    assert np.all(st[top, 1] == 1) and np.all(st[~top, 1] == 0)
    with Image.open(io.BytesIO(tex)) as im:
        arr = np.asarray(im.convert("RGB"))
        assert arr[5, 64, 0] > 180 and arr[-5, 64, 2] > 180
    binding = UsdShade.MaterialBindingAPI(mesh.GetPrim()).ComputeBoundMaterial()[0]
    assert binding.GetPath() == "/Root/Materials/picture"
