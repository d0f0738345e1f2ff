"""Continue from an edited piece ("surgery"): paint over a finished Doorways piece, then let the optimiser go on.

The artist deletes an extra door in an image editor, smudges the area, blurs the
whole picture a little, and starts a new run from it with most of the weight on
small patches (the generator's ``init_cut_pow``), so the layout stays and the
detail is filled in again.

:func:`continue_piece` copies the (edited) picture into ``<store>/inits`` and
queues a staff job for the same exhibit, prompts and seed with
``init_image`` pointing at the copy and ``parent_piece`` naming the piece it
came from (both land in the new piece's params and PNG metadata).  Torch-free.
"""
from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import Any, Sequence

from exhibits.files import atomic_write_bytes, png_bytes
from exhibits.store import Job, Piece, Store

log = logging.getLogger(__name__)

INITS_DIR = "inits"
ASPECT_TOLERANCE = 0.01  # relative difference of width/height still counted as "the same aspect"
# Job parameters of the parent that describe the parent's own start, not the look of the piece.
_NOT_CARRIED = ("init_image", "parent_piece", "batch", "seed")


class SurgeryError(ValueError):
    """A piece cannot be continued as asked; the message names the piece or the file."""


def _piece(store: Store, piece_id: int) -> Piece:
    piece = store.get_piece(int(piece_id), include_hidden=True)
    if piece is None:
        raise SurgeryError(f"no piece with id {piece_id} in {store.root}")
    if piece.generator != "vqgan_clip" and "init_image" not in piece.params:
        raise SurgeryError(f"piece {piece.id} was made by generator {piece.generator!r}, which cannot start from an "
                           "init image; only optimising generators such as 'vqgan_clip' can be continued")
    return piece


def _open_image(path: Path) -> Any:
    """Open and fully decode ``path`` as RGB; SurgeryError naming the file if it is not a readable image."""
    from PIL import Image, UnidentifiedImageError

    if not path.is_file():
        raise SurgeryError(f"init image {path}: no such file")
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
                # An editor's transparent areas become black in a plain convert; put them on white instead.
                rgba = im.convert("RGBA")
                flat = Image.new("RGB", rgba.size, (255, 255, 255))
                flat.paste(rgba, mask=rgba.getchannel("A"))
                return flat
            return im.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        raise SurgeryError(f"init image {path}: not an image that can be read ({exc})") from exc


def prepare_init_image(store: Store, piece: Piece, image_path: str | os.PathLike | None = None) -> Path:
    """Validate the edited picture and copy it, as PNG, into ``<store>/inits``; returns the stored path.

    Without ``image_path`` the piece's own image is used.  A picture whose aspect ratio differs from the
    piece's is resized to the piece's size (with a warning): the optimiser's canvas keeps the piece's shape.
    """
    from PIL import Image

    src = Path(image_path).expanduser() if image_path is not None else store.path(piece.image_path)
    image = _open_image(src)
    if image.width < 1 or image.height < 1:
        raise SurgeryError(f"init image {src}: it is empty ({image.width}x{image.height})")
    want, got = piece.width / piece.height, image.width / image.height
    resized_from = None
    if abs(got - want) / want > ASPECT_TOLERANCE:
        log.warning("init image %s is %dx%d (aspect %.3f) but piece %d is %dx%d (aspect %.3f); resizing it to %dx%d",
                    src, image.width, image.height, got, piece.id, piece.width, piece.height, want,
                    piece.width, piece.height)
        resized_from = [image.width, image.height]
        image = image.resize((piece.width, piece.height), Image.LANCZOS)
    meta = {"parent_piece": piece.id, "source_file": src.name, "resized_from": resized_from,
            "label": f"init image for continuing piece {piece.id}"}
    data = png_bytes(image, meta)
    digest = hashlib.sha256(data).hexdigest()[:16]
    dest = store.root / INITS_DIR / f"piece{piece.id:06d}-{digest}.png"
    if not dest.is_file():
        atomic_write_bytes(dest, data)
    log.info("init image for piece %d: %s (from %s)", piece.id, dest, src)
    return dest


def _cut_pow(value: float | Sequence[float] | None) -> float | list[float] | None:
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        vals = [float(value)]
    else:
        vals = [float(v) for v in value]
    if not 1 <= len(vals) <= 2 or not all(v > 0 for v in vals):
        raise SurgeryError(f"cut_pow {value!r}: give a positive number or [start, end] (above 1: small patches)")
    return vals[0] if len(vals) == 1 else vals


def continue_piece(store: Store, piece_id: int, image_path: str | os.PathLike | None = None, *,
                   steps: int | None = None, cut_pow: float | Sequence[float] | None = None,
                   lr: float | None = None, seed: int | None = None) -> Job:
    """Queue a staff job that continues piece ``piece_id`` from ``image_path`` (default: the piece itself).

    The new job keeps the piece's exhibit, prompts, canvas and the parent job's own overrides; ``seed``
    defaults to the piece's.  ``cut_pow`` sets the init-time patch-size schedule (the generator's
    ``init_cut_pow``: above 1 favours small patches, so the edit's layout stays and detail is filled in).
    Raises :class:`SurgeryError` (a ValueError) before anything is written to the queue.
    """
    piece = _piece(store, piece_id)
    if steps is not None and (not isinstance(steps, int) or isinstance(steps, bool) or steps < 1):
        raise SurgeryError(f"steps {steps!r}: give a whole number >= 1")
    if lr is not None and not (isinstance(lr, (int, float)) and lr > 0):
        raise SurgeryError(f"lr {lr!r}: give a positive number")
    init_cut = _cut_pow(cut_pow)
    init = prepare_init_image(store, piece, image_path)

    parent_job = store.get_job(piece.job_id) if piece.job_id is not None else None
    params: dict[str, Any] = {k: v for k, v in (parent_job.params if parent_job else {}).items()
                              if k not in _NOT_CARRIED}
    # relative to the archive, so a moved archive still finds it
    params.update(width=piece.width, height=piece.height, init_image=str(init.relative_to(store.root)),
                  parent_piece=piece.id)
    if steps is not None:
        params["steps"] = steps
    if lr is not None:
        params["lr"] = float(lr)
    if init_cut is not None:
        params["init_cut_pow"] = init_cut
    if seed is None:
        effective = piece.params.get("seed")
        seed = effective if isinstance(effective, int) else piece.seed
    job = store.submit(piece.exhibit, prompts=piece.prompts, prompt_text=piece.prompt_text, seed=int(seed),
                       params=params, source="staff")
    log.info("job %d continues piece %d from %s", job.id, piece.id, init)
    return job
