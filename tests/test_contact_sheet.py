"""Contact sheets from a real store: layout, pixels from the pieces, curation frames, selection, the CLI."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from exhibits.files import read_png_meta
from exhibits.store import Store
from kiosk.contact_sheet import BORDER, FRAME, contact_sheet, fit_into, layout, piece_label, select_pieces

ROOT = Path(__file__).resolve().parents[1]


def gradient(w: int, h: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    arr = np.stack([(x * 255 // max(1, w - 1)), (y * 255 // max(1, h - 1)),
                    np.full_like(x, int(rng.integers(0, 256)))], -1).astype(np.uint8)
    return Image.fromarray(arr, "RGB")


def add(store: Store, image: Image.Image, *, seed: int, sigma: float | None = 1.25, source: str = "playlist",
        params: dict | None = None, exhibit: str = "demo"):
    """A piece made the way the worker makes one: submit, claim, add_piece."""
    job = store.submit(exhibit, seed=seed, params=params or {}, source=source)
    claimed = store.claim("w", exhibits=[exhibit])
    assert claimed.id == job.id
    meta = {"generator": "default", "label": "test", "series": "S", "title": "T", "params": params or {}}
    if sigma is not None:
        meta["sigma"] = sigma
    return store.add_piece(claimed, "w", image, meta)


def test_cells_hold_the_pieces_pixels_with_labels_and_curation_frames(store: Store, tmp_path: Path) -> None:
    images = [gradient(96, 96, 1), gradient(128, 64, 2), gradient(40, 80, 3), gradient(64, 64, 4),
              Image.new("RGB", (50, 50), (10, 200, 30))]
    pieces = [add(store, im, seed=100 + i, sigma=0.5 * (i + 1)) for i, im in enumerate(images)]
    store.set_curation(pieces[0].id, "keep")
    store.set_curation(pieces[1].id, "reject")
    pieces = [store.get_piece(p.id) for p in pieces]

    out = contact_sheet(store, pieces, tmp_path / "out" / "sheet.png", cols=3, thumb=64, title="test sheet")
    lay = layout(len(pieces), cols=3, thumb=64, title=True)
    assert lay.rows == 2 and lay.cols == 3
    with Image.open(out) as im:
        assert im.size == lay.size
        sheet = np.asarray(im.convert("RGB"))
    for i, (piece, original) in enumerate(zip(pieces, images)):
        x, y = lay.thumb_origin(i)
        expect = np.asarray(fit_into(original, 64))
        h, w = expect.shape[:2]
        ox, oy = x + (64 - w) // 2, y + (64 - h) // 2
        assert np.array_equal(sheet[oy:oy + h, ox:ox + w], expect), f"cell {i} does not show piece {piece.id}"
        frame = sheet[y - BORDER, x + 32]
        assert tuple(frame) == FRAME.get(piece.curation, FRAME[None]), (i, piece.curation)
        label = sheet[y + 64 + BORDER:y + 64 + BORDER + lay.label_height, x - BORDER:x + 64]
        assert (label.max(axis=-1) > 120).sum() > 20, f"cell {i} has no label text"
    # the solid piece is solid on the sheet, not blurred into its neighbours
    x, y = lay.thumb_origin(4)
    assert (sheet[y:y + 64, x:x + 64] == (10, 200, 30)).all()
    assert piece_label(pieces[0]) == (f"#{pieces[0].id}  seed 100", "sigma 0.5  keep")
    assert piece_label(pieces[2])[1] == "sigma 1.5  unreviewed"

    meta = read_png_meta(out)
    assert meta["pieces"] == [p.id for p in pieces] and meta["missing"] == 0 and meta["title"] == "test sheet"
    assert [p.name for p in out.parent.iterdir()] == ["sheet.png"], "temporary files left beside the sheet"


def test_unreadable_piece_gets_a_cell_that_says_so(store: Store, tmp_path: Path) -> None:
    good = add(store, gradient(32, 32, 5), seed=1)
    gone = add(store, gradient(32, 32, 6), seed=2, sigma=None)
    store.path(gone.image_path).unlink()
    out = contact_sheet(store, [good, gone], tmp_path / "sheet.png", thumb=32)
    assert read_png_meta(out)["missing"] == 1
    assert piece_label(gone)[1] == "sigma -  unreviewed"


def test_bad_arguments_are_refused_with_the_reason(store: Store, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at least one piece"):
        contact_sheet(store, [], tmp_path / "x.png")
    piece = add(store, gradient(16, 16, 7), seed=3)
    with pytest.raises(ValueError, match="thumb"):
        contact_sheet(store, [piece], tmp_path / "x.png", thumb=4)
    with pytest.raises(ValueError, match="--limit"):
        layout(5000, cols=1, thumb=256)
    with pytest.raises(ValueError, match="curation must be one of"):
        select_pieces(store, curation="maybe")
    assert not (tmp_path / "x.png").exists()


def make_batch(store: Store) -> list:
    pieces = []
    for i in (2, 0, 1):  # rendered out of order; the sheet follows batch_index
        pieces.append(add(store, gradient(24, 24, i), seed=500 + i, source="batch", exhibit="tiny",
                          params={"batch": "b1", "batch_index": i, "sigma": 1.0}))
    add(store, gradient(24, 24, 9), seed=9, source="batch", exhibit="tiny", params={"batch": "other", "batch_index": 0})
    add(store, gradient(24, 24, 8), seed=8)
    return sorted(pieces, key=lambda p: p.seed)


def test_select_pieces_by_batch_exhibit_and_curation(store: Store) -> None:
    batch = make_batch(store)
    store.set_curation(batch[1].id, "keep")
    assert [p.seed for p in select_pieces(store, batch="b1")] == [500, 501, 502]
    assert [p.seed for p in select_pieces(store, batch="b1", curation="keep")] == [501]
    assert [p.seed for p in select_pieces(store, batch="b1", curation="unreviewed")] == [500, 502]
    assert [p.seed for p in select_pieces(store, batch="b1", limit=2)] == [500, 501]
    assert {p.seed for p in select_pieces(store, exhibit="tiny")} == {500, 501, 502, 9}
    assert len(select_pieces(store)) == 5 and select_pieces(store, batch="nope") == []


def test_cli_writes_the_sheet_of_a_batchs_keepers(tmp_path: Path) -> None:
    data = tmp_path / "data"
    store = Store(data)
    batch = make_batch(store)
    store.set_curation(batch[0].id, "keep")
    store.set_curation(batch[2].id, "keep")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = tmp_path / "sheet.png"
    run = subprocess.run([sys.executable, "-m", "kiosk", "contact-sheet", "--data", str(data), "--batch", "b1",
                          "--curation", "keep", "--thumb", "48", "--out", str(out)],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == str(out)
    meta = read_png_meta(out)
    assert meta["pieces"] == [batch[0].id, batch[2].id] and meta["title"] == "b1 · keep · 2 pieces"
    with Image.open(out) as im:
        assert im.size == layout(2, thumb=48, title=True).size

    empty = subprocess.run([sys.executable, "-m", "kiosk", "contact-sheet", "--data", str(data), "--batch", "b1",
                            "--curation", "reject", "--out", str(tmp_path / "none.png")],
                           cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert empty.returncode == 1 and "no pieces in batch b1 curated 'reject'" in empty.stderr
    assert not (tmp_path / "none.png").exists()
