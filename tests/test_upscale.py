"""Print upscaling: tiny Real-ESRGAN checkpoints in the official formats loaded by spandrel, the weights-free
fallback, and the print's honest statement of its effective resolution."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from filters import ExportError, export
from filters.upscale import installed_models, resample, upscale_to
from tests.filters_helpers import META, gradient, listing, save_piece
from tests.upscale_helpers import save_compact, save_rrdbnet

pytestmark = pytest.mark.timeout(120)
ROOT = Path(__file__).resolve().parents[1]


def _edges(size: int = 64) -> Image.Image:
    """Hard vertical bars: what loses the most when enlarged plainly."""
    arr = np.zeros((size, size, 3), np.uint8)
    arr[:, (np.arange(size) // 8) % 2 == 1] = 230
    arr[:, :, 2] = 40
    return Image.fromarray(arr, "RGB")


def _edge_slope(img: Image.Image) -> float:
    """Steepest step along the middle row across the first bar edge, as a share of the bar's height."""
    row = np.asarray(img.convert("L"), np.float32)[img.size[1] // 2]
    f = img.size[0] // 64
    dark, light = row[4 * f], row[12 * f]  # the middles of the first dark and light bars
    return float(np.abs(np.diff(row[6 * f: 10 * f])).max() / (light - dark))


def _ringing(img: Image.Image) -> float:
    """How far the dark bar's middle third strays from its centre value (halos), in levels."""
    row = np.asarray(img.convert("L"), np.float32)[img.size[1] // 2]
    f = img.size[0] // 64
    core = row[3 * f: 5 * f]
    return float(np.abs(core - row[4 * f]).max())


@pytest.mark.parametrize("maker, arch", [(save_rrdbnet, "ESRGAN"), (save_compact, "RealESRGAN Compact")])
def test_spandrel_loads_official_formats_and_tiles_without_seams(tmp_path, maker, arch):
    from renderer.upscale import load_model, upscale

    path = maker(tmp_path / "model.pth")
    desc = load_model(str(path))
    assert desc.architecture.name == arch and desc.scale == 4 and desc.purpose == "SR"
    src = gradient(48, 40)
    whole = upscale(src, str(path), tile=512)
    tiled = upscale(src, str(path), tile=20, overlap=16)
    assert whole.size == tiled.size == (192, 160)
    assert np.array_equal(np.asarray(whole), np.asarray(tiled))  # overlap covers the receptive field


def test_unsafe_or_wrong_checkpoints_are_refused_by_name(tmp_path):
    from renderer.upscale import UpscaleError, load_model

    scripted = tmp_path / "model.pt"
    scripted.write_bytes(b"not looked at")
    with pytest.raises(UpscaleError, match=r"model\.pt: only \.pth, \.safetensors files are loaded"):
        load_model(str(scripted))
    import torch

    junk = tmp_path / "junk.pth"
    torch.save({"params": {"encoder.weight": torch.zeros(3, 3)}}, junk)
    with pytest.raises(UpscaleError, match="junk.pth: spandrel does not recognise its architecture"):
        load_model(str(junk))


def test_fallback_is_sharper_than_plain_lanczos():
    src = _edges()
    plain = src.resize((256, 256), Image.Resampling.LANCZOS)
    careful = resample(src, 256, 256)
    assert careful.size == (256, 256)
    assert _edge_slope(careful) > 1.2 * _edge_slope(plain)
    assert _ringing(careful) <= _ringing(plain) + 2  # sharper without new halos inside the bars
    # and keeps the picture: mean colour within 2 levels, no clipping of the flat areas
    assert np.abs(np.asarray(careful, float).mean((0, 1)) - np.asarray(plain, float).mean((0, 1))).max() < 2.5


def test_auto_prefers_an_installed_model_and_says_so(tmp_path):
    weights = tmp_path / "weights"
    assert installed_models(weights) == []
    img, report = upscale_to(gradient(64, 64), 200, 200, weights_dir=weights)
    assert report.method == "resample" and img.size == (200, 200)
    save_compact(weights / "realesr-general-x4v3.pth")
    save_rrdbnet(weights / "RealESRGAN_x4plus.pth")
    assert installed_models(weights) == ["RealESRGAN_x4plus", "realesr-general-x4v3"]
    img, report = upscale_to(gradient(64, 64), 200, 200, weights_dir=weights)
    assert img.size == (200, 200)
    assert (report.method, report.model, report.architecture, report.model_scale) == \
        ("model", "RealESRGAN_x4plus", "ESRGAN", 4)
    meta = report.as_meta(width_in=2.0)
    assert meta["source_ppi"] == 32.0 and meta["output_ppi"] == 100.0 and meta["factor"] == pytest.approx(3.125)
    # a piece that is already large enough is not enlarged at all
    _, report = upscale_to(gradient(300, 300), 200, 200, weights_dir=weights)
    assert report.method == "none"


def test_named_upscaler_that_is_missing_names_the_fetch_command(tmp_path):
    piece = save_piece(tmp_path / "p.png")
    with pytest.raises(ExportError, match="run: python -m kiosk fetch-models RealESRGAN_x2plus"):
        export("print", piece, META, tmp_path / "out", size_cm=3, upscaler="RealESRGAN_x2plus",
               weights_dir=str(tmp_path / "weights"))
    with pytest.raises(ExportError, match="unknown checkpoint 'waifu'"):
        export("print", piece, META, tmp_path / "out", size_cm=3, upscaler="waifu", weights_dir=str(tmp_path))
    assert listing(tmp_path / "out") == []


def test_torch_free_process_runs_the_model_out_of_process(tmp_path):
    """A process without torch (like the web app) upscales through ``python -m renderer.upscale``."""
    weights = tmp_path / "weights"
    save_rrdbnet(weights / "RealESRGAN_x4plus.pth")
    piece = save_piece(tmp_path / "p.png", gradient(96, 96))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    code = ("import sys; from filters import export; "
            f"export('print', {str(piece)!r}, {{'title': 'Bars', 'seed': 1}}, {str(tmp_path / 'out')!r}, "
            f"size_cm=8, weights_dir={str(weights)!r}); "
            "assert 'torch' not in sys.modules, 'the exporting process imported torch'")
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=110)
    assert proc.returncode == 0, proc.stderr[-2000:]
    tif = next((tmp_path / "out").rglob("*.tif"))
    with Image.open(tif) as im:
        info = json.loads(im.tag_v2[270])["print"]["upscale"]
        assert im.size == (945 + 2 * 36,) * 2
    assert info["method"] == "model" and info["model"] == "RealESRGAN_x4plus" and info["source_px"] == [96, 96]
    assert info["source_ppi"] == pytest.approx(30.5, abs=0.1) and info["output_ppi"] == pytest.approx(300, abs=1)


def test_bfloat16_autocast_matches_float32(tmp_path):
    """The reduced-precision path a GPU takes, checked on the CPU with bfloat16 autocast."""
    from renderer.upscale import upscale

    path = save_compact(tmp_path / "realesr-general-x4v3.pth")
    src = gradient(32, 32)
    full = np.asarray(upscale(src, str(path)), np.int16)
    half = np.asarray(upscale(src, str(path), reduced_precision=True), np.int16)
    assert full.shape == half.shape == (128, 128, 3)
    assert np.abs(full - half).mean() < 2.0 and np.abs(full - half).max() <= 16


def test_web_print_export_writes_the_pdf_alone():
    """The phone's print download asks for no raster (it used to make a 300 dpi PNG and delete it)."""
    from filters import registry
    from kiosk.web.exports import export_options

    opts = export_options("print", registry.exporter_options("print"), "/srv/weights")
    assert opts == {"size_cm": 20.0, "raster": "none", "weights_dir": "/srv/weights"}
