"""Animated pieces for Effect House: frame sequences and sprite sheets inside its limits."""
from __future__ import annotations

import io
import json
import zipfile

import numpy as np
import pytest
from PIL import Image

from filters import ExportError, export
from tests.filters_helpers import META, gradient, image_icc, listing, save_piece

pytestmark = pytest.mark.timeout(120)


def _anim(path, frames: int, size: int = 160, noisy: bool = True):
    """An animated PNG (APNG: no palette quantisation, so quick to make) of a drifting, noisy gradient."""
    rng = np.random.default_rng(0)
    ims = []
    for i in range(frames):
        arr = np.asarray(gradient(size, size)).astype(np.int16)
        arr = np.roll(arr, i * 3, axis=1)
        if noisy:
            arr = arr + rng.integers(-60, 60, arr.shape)
        ims.append(Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB"))
    ims[0].save(path, format="PNG", save_all=True, append_images=ims[1:], duration=40, loop=0, compress_level=1)
    return path


def _open(path):
    zf = zipfile.ZipFile(path)
    assert zf.testzip() is None
    return zf, json.loads(zf.read("manifest.json"))


def test_long_timelapse_is_thinned_to_200_frames_within_limits(tmp_path):
    anim = _anim(tmp_path / "timelapse.png", 260, size=128)
    piece = save_piece(tmp_path / "p.png")
    (path,) = export("effecthouse_sequence", piece, {**META, "animation": str(anim)}, tmp_path / "out")
    zf, manifest = _open(path)
    names = zf.namelist()
    assert names[0] == "README.txt" and "Effect House" in zf.read("README.txt").decode()
    frames = [n for n in names if n.startswith("frames/")]
    assert len(frames) == manifest["frames"] == 200 and manifest["source"]["frames"] == 260
    assert manifest["source"]["fps"] == pytest.approx(25.0) and manifest["fps"] == pytest.approx(25 * 200 / 260, abs=0.01)
    sizes = [zf.getinfo(n).file_size for n in frames]
    assert max(sizes) < 1024 * 1024 and sum(sizes) <= 8 * 1024 * 1024
    first = zf.read(frames[0])
    with Image.open(io.BytesIO(first)) as im:
        assert im.size == (manifest["frame_size"],) * 2 and manifest["frame_size"] in (512, 256, 128)
    assert "sRGB" in image_icc(first)
    assert sum(zf.getinfo(n).file_size for n in names) <= 8 * 1024 * 1024


def test_sprite_sheet_option(tmp_path):
    small = Image.new("RGB", (64, 64), "teal")
    gif = tmp_path / "walk.gif"  # a real GIF too
    small.save(gif, save_all=True, append_images=[Image.new("RGB", (64, 64), c) for c in ("red", "navy")] * 14 + [small],
               duration=100, loop=0)
    anim = gif
    piece = save_piece(tmp_path / "p.png")
    (path,) = export("effecthouse_sequence", piece, META, tmp_path / "out", animation=str(anim),
                     sprite_sheet_too=True, max_frames=25)
    zf, manifest = _open(path)
    sheet = manifest["sprite_sheet"]
    assert sheet["columns"] == 5 and sheet["cell"] == 204 and sheet["frames"] == 25 and manifest["source"]["frames"] == 30
    data = zf.read(sheet["path"])
    assert len(data) < 1024 * 1024
    with Image.open(io.BytesIO(data)) as im:
        assert im.size == (1020, 1020)
    assert manifest["frames"] == 25


def test_sequence_errors_name_what_is_wrong(tmp_path):
    piece = save_piece(tmp_path / "p.png")
    with pytest.raises(ExportError, match="needs option 'animation'"):
        export("effecthouse_sequence", piece, META, tmp_path / "out")
    with pytest.raises(ExportError, match="missing.gif does not exist"):
        export("effecthouse_sequence", piece, META, tmp_path / "out", animation=str(tmp_path / "missing.gif"))
    bad = tmp_path / "bad.gif"
    bad.write_text("GIF89a nonsense")
    with pytest.raises(ExportError, match="bad.gif is not an animation"):
        export("effecthouse_sequence", piece, META, tmp_path / "out", animation=str(bad))
    with pytest.raises(ExportError, match="'max_frames' must be an integer from 2 to 200"):
        export("effecthouse_sequence", piece, META, tmp_path / "out", animation=str(bad), max_frames=500)
    assert listing(tmp_path / "out") == []
