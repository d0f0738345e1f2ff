"""The prompt-suffix experiment through the CLI: same seeds with and without modifiers on one sheet."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from exhibits.files import read_png_meta

ROOT = Path(__file__).resolve().parents[1]


def test_suffix_sheet_renders_each_seed_with_and_without_each_modifier(tmp_path):
    out = tmp_path / "sheet.png"
    cmd = [sys.executable, "-m", "kiosk", "suffix-sheet", "pixels-tiny", "--exhibit-dir", str(ROOT / "exhibits/family"),
           "--data", str(tmp_path / "data"), "--device", "cpu", "--prompt", "a lighthouse in a storm | fog:-0.5",
           "--modifier", "rendered in unreal engine", "--modifier", "trending on artstation", "--seeds", "4", "5",
           "--size", "32", "--thumb", "64", "--out", str(out)]
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    meta = read_png_meta(out)
    assert meta["modifiers"] == ["rendered in unreal engine", "trending on artstation"] and meta["seeds"] == [4, 5]
    sheet = np.asarray(Image.open(out).convert("RGB")).astype(float)
    # 2 rows x 3 columns of 64 px cells: the cells differ (a modifier changes the CLIP target; seeds differ)
    h, w, _ = sheet.shape
    assert w > 3 * 64 and h > 2 * 64
    cells = [sheet[-(2 - r) * (64 + 12) - 12 + 0:-(2 - r) * (64 + 12) - 12 + 64 or None, -(3 - c) * 76 - 12 + 0:-(3 - c) * 76 - 12 + 64]
             for r in range(2) for c in range(3)]
    assert all(cell.shape[:2] == (64, 64) and cell.std() > 1 for cell in cells)
    assert len({cell.tobytes() for cell in cells}) == 6


def test_suffix_sheet_needs_a_modifier(tmp_path):
    cmd = [sys.executable, "-m", "kiosk", "suffix-sheet", "pixels-tiny", "--exhibit-dir", str(ROOT / "exhibits/family"),
           "--data", str(tmp_path / "data"), "--prompt", "x", "--out", str(tmp_path / "s.png")]
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "--modifier" in res.stderr
