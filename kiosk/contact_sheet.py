"""Contact sheets: finished pieces laid out in a labelled grid PNG, for curating a merch batch on paper.

``python -m kiosk contact-sheet --batch strange-attractions-0-5000 --curation unreviewed --out sheet.png``

Each cell is the piece scaled to fit a ``thumb`` x ``thumb`` square (centred on the sheet's
background), framed by its curation verdict (green: keep, red: reject, grey: unreviewed), with
two lines beneath it: the piece id and seed, then sigma and the verdict. Torch-free.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from exhibits.files import write_png
from exhibits.store import Piece, Store

log = logging.getLogger(__name__)

CURATIONS = ("keep", "reject", "unreviewed")
BACKGROUND = (24, 24, 24)
TEXT = (235, 235, 235)
MUTED = (150, 150, 150)
FRAME = {"keep": (40, 190, 80), "reject": (220, 50, 50), None: (90, 90, 90)}
PAD = 12  # between cells and around the sheet
BORDER = 4  # curation frame around each thumbnail
MAX_SHEET_SIDE = 30000  # PIL and image viewers struggle beyond this


@dataclass(frozen=True)
class SheetLayout:
    """Where everything goes: ``thumb_origin(i)`` is the top-left of the ``thumb`` square of cell ``i``."""

    count: int
    cols: int
    thumb: int
    title_height: int
    label_height: int

    @property
    def rows(self) -> int:
        return -(-self.count // self.cols)

    @property
    def cell_w(self) -> int:
        return self.thumb + 2 * BORDER + PAD

    @property
    def cell_h(self) -> int:
        return self.thumb + 2 * BORDER + self.label_height + PAD

    @property
    def size(self) -> tuple[int, int]:
        return PAD + self.cols * self.cell_w, self.title_height + PAD + self.rows * self.cell_h

    def thumb_origin(self, i: int) -> tuple[int, int]:
        if not 0 <= i < self.count:
            raise IndexError(f"cell {i} is outside a sheet of {self.count}")
        row, col = divmod(i, self.cols)
        return (PAD + col * self.cell_w + BORDER, self.title_height + PAD + row * self.cell_h + BORDER)


def layout(count: int, *, cols: int = 8, thumb: int = 256, title: bool = False) -> SheetLayout:
    if count < 1:
        raise ValueError("a contact sheet needs at least one piece")
    if cols < 1:
        raise ValueError(f"cols must be at least 1, got {cols}")
    if not 16 <= thumb <= 2048:
        raise ValueError(f"thumb must be 16 to 2048 pixels, got {thumb}")
    font_px = _font_px(thumb)
    lay = SheetLayout(count=count, cols=min(cols, count), thumb=thumb,
                      title_height=(2 * font_px + PAD) if title else 0, label_height=2 * font_px + 10)
    if max(lay.size) > MAX_SHEET_SIDE:
        raise ValueError(f"a sheet of {count} pieces at {thumb} px in {lay.cols} columns would be "
                         f"{lay.size[0]}x{lay.size[1]} pixels; use --limit, --cols or --thumb")
    return lay


def _font_px(thumb: int) -> int:
    return max(10, min(22, thumb // 14))


def _font(px: int) -> Any:
    from PIL import ImageFont

    return ImageFont.load_default(size=px)


def fit_into(image: Any, side: int) -> Any:
    """``image`` scaled (keeping its aspect ratio) to fit a ``side`` x ``side`` square."""
    from PIL import Image

    scale = min(side / image.width, side / image.height)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.convert("RGB").resize(size, Image.Resampling.LANCZOS) if size != image.size else image.convert("RGB")


def piece_label(piece: Piece) -> tuple[str, str]:
    """The two lines under a cell."""
    sigma = "sigma -" if piece.sigma is None else f"sigma {piece.sigma:.3g}"
    return f"#{piece.id}  seed {piece.seed}", f"{sigma}  {piece.curation or 'unreviewed'}"


def contact_sheet(store: Store, pieces: Sequence[Piece], out_path: str | Path, *, cols: int = 8, thumb: int = 256,
                  title: str | None = None) -> Path:
    """Compose ``pieces`` into a labelled grid and write it atomically as a PNG; returns ``out_path``.

    A piece whose file cannot be read gets a grey cell that says so (the sheet is still written).
    """
    from PIL import Image, ImageDraw

    lay = layout(len(pieces), cols=cols, thumb=thumb, title=bool(title))
    sheet = Image.new("RGB", lay.size, BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    px = _font_px(thumb)
    font, small = _font(px), _font(max(9, px - 2))
    if title:
        draw.text((PAD, PAD // 2), title, fill=TEXT, font=_font(round(px * 1.4)))
    missing = 0
    for i, piece in enumerate(pieces):
        x, y = lay.thumb_origin(i)
        frame = FRAME.get(piece.curation, FRAME[None])
        draw.rectangle((x - BORDER, y - BORDER, x + thumb + BORDER - 1, y + thumb + BORDER - 1), fill=frame)
        draw.rectangle((x, y, x + thumb - 1, y + thumb - 1), fill=BACKGROUND)
        try:
            with Image.open(store.path(piece.image_path)) as im:
                small_im = fit_into(im, thumb)
        except (OSError, ValueError) as exc:
            missing += 1
            log.warning("piece %d: %s cannot be read (%s); its cell says so", piece.id, piece.image_path, exc)
            draw.text((x + 6, y + 6), "image missing", fill=MUTED, font=small)
        else:
            sheet.paste(small_im, (x + (thumb - small_im.width) // 2, y + (thumb - small_im.height) // 2))
        first, second = piece_label(piece)
        ty = y + thumb + BORDER + 3
        draw.text((x - BORDER, ty), first, fill=TEXT, font=font)
        draw.text((x - BORDER, ty + px + 2), second, fill=frame if piece.curation else MUTED, font=small)
    meta = {"title": title or "contact sheet", "pieces": [p.id for p in pieces], "cols": lay.cols, "thumb": thumb,
            "missing": missing}
    out = write_png(out_path, sheet, meta)
    log.info("contact sheet of %d pieces (%dx%d) written to %s", len(pieces), *lay.size, out)
    return Path(out)


def select_pieces(store: Store, *, batch: str | None = None, exhibit: str | None = None,
                  curation: str | None = None, limit: int | None = None) -> list[Piece]:
    """Pieces of one batch (in batch order) or of one exhibit / the whole archive (newest first)."""
    if curation is not None and curation not in CURATIONS:
        raise ValueError(f"curation must be one of {', '.join(CURATIONS)}, got {curation!r}")
    if limit is not None and limit < 1:
        raise ValueError(f"--limit must be at least 1, got {limit}")
    if batch is None:
        return store.recent_pieces(limit or 10**9, exhibit=exhibit, include_hidden=True, curation=curation)
    jobs = [j for j in store.jobs(["done"], source="batch", limit=10**9)
            if j.params.get("batch") == batch and j.piece_id is not None]
    jobs.sort(key=lambda j: (j.params.get("batch_index", 0), j.id))
    pieces = [p for p in (store.get_piece(j.piece_id, include_hidden=True) for j in jobs) if p is not None]
    if exhibit is not None:
        pieces = [p for p in pieces if p.exhibit == exhibit]
    if curation == "unreviewed":
        pieces = [p for p in pieces if p.curation is None]
    elif curation:
        pieces = [p for p in pieces if p.curation == curation]
    return pieces[:limit] if limit else pieces
