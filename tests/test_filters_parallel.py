"""Exporting many pieces in parallel: every piece's files, a failure named without losing the others."""
from __future__ import annotations

import zipfile

import pytest

from filters.parallel import Item, export_many
from tests.filters_helpers import META, gradient, listing, noise, save_piece

pytestmark = pytest.mark.timeout(120)


def test_bundles_of_many_pieces_in_two_processes(tmp_path):
    good = [save_piece(tmp_path / f"in/p{i}.png", gradient(96, 96) if i % 2 else noise(96, i)) for i in range(3)]
    broken = tmp_path / "in" / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    items = [Item(str(p), {**META, "piece_id": i}, str(tmp_path / "out" / f"piece-{i}"), f"piece-{i}")
             for i, p in enumerate([good[0], broken, good[1], good[2]])]
    result = export_many(items, "bundle", {"options": {"print": {"size_cm": 3}, "glb": {"texture_px": 64},
                                                         "usdz": {"texture_px": 64}}},
                         workers=2, progress=False)
    assert sorted(result.done) == [0, 2, 3] and list(result.failed) == [1]
    assert "broken.png is not an image file PIL can read" in result.failed[1]
    assert listing(tmp_path / "out" / "piece-1") == []  # nothing half-written for the broken one
    for i in (0, 2, 3):
        names = [p.name for p in result.done[i]]
        assert names == [f"piece-{i}_print.pdf", f"piece-{i}_print_300dpi.tif", f"piece-{i}_ar_packs.zip",
                         f"piece-{i}.glb", f"piece-{i}.usdz", f"piece-{i}_bundle.zip"]
        with zipfile.ZipFile(result.done[i][-1]) as zf:
            assert zf.testzip() is None and "manifest.json" in zf.namelist()
