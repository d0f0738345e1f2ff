"""A framed picture as plain triangle meshes, shared by the GLB and USDZ exporters.

Units are metres, Y up, the picture facing +Z (the viewer), the back of the frame on
z = 0 (the wall) and the bottom of the frame on y = 0 (the floor or a shelf), centred on
x = 0: what Scene Viewer's and Quick Look's wall and floor placement expect.  The picture
is ``width`` x ``height`` at true size inside a frame ``frame`` wide and ``depth`` deep,
recessed a little behind the frame's front.

UVs follow glTF (v = 0 at the top of the image); :func:`flip_v` gives USD's (v = 0 at
the bottom).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

FRAME_COLOUR = (0.055, 0.05, 0.045)  # near-black painted wood (linear RGB)
BACK_COLOUR = (0.32, 0.26, 0.19)  # raw hardboard


@dataclass(frozen=True)
class Part:
    name: str
    material: str  # "picture", "frame" or "back"
    positions: Any  # (n, 3) float32
    normals: Any  # (n, 3) float32
    uvs: Any  # (n, 2) float32
    indices: Any  # (m,) uint16, counter-clockwise seen from outside


def _quad(corners: list[tuple[float, float, float]], normal: tuple[float, float, float],
          uv: list[tuple[float, float]] | None = None) -> tuple[list, list, list, list]:
    """Four corners (bottom-left, bottom-right, top-right, top-left as seen from outside) -> two triangles."""
    uv = uv or [(0.0, 1.0), (1.0, 1.0), (1.0, 0.0), (0.0, 0.0)]
    return list(corners), [normal] * 4, uv, [0, 1, 2, 0, 2, 3]


def _box(x0: float, x1: float, y0: float, y1: float, z0: float, z1: float) -> tuple[list, list, list, list]:
    """An axis-aligned box with its six faces outward."""
    faces = [
        ([(x0, y0, z1), (x1, y0, z1), (x1, y1, z1), (x0, y1, z1)], (0, 0, 1)),  # front
        ([(x1, y0, z0), (x0, y0, z0), (x0, y1, z0), (x1, y1, z0)], (0, 0, -1)),  # back
        ([(x1, y0, z1), (x1, y0, z0), (x1, y1, z0), (x1, y1, z1)], (1, 0, 0)),  # right
        ([(x0, y0, z0), (x0, y0, z1), (x0, y1, z1), (x0, y1, z0)], (-1, 0, 0)),  # left
        ([(x0, y1, z1), (x1, y1, z1), (x1, y1, z0), (x0, y1, z0)], (0, 1, 0)),  # top
        ([(x0, y0, z0), (x1, y0, z0), (x1, y0, z1), (x0, y0, z1)], (0, -1, 0)),  # bottom
    ]
    return _merge([_quad(c, n) for c, n in faces])


def _merge(pieces: list[tuple[list, list, list, list]]) -> tuple[list, list, list, list]:
    pos, nrm, uv, idx = [], [], [], []
    for p, n, t, i in pieces:
        base = len(pos)
        pos += p
        nrm += n
        uv += t
        idx += [base + k for k in i]
    return pos, nrm, uv, idx


def _part(name: str, material: str, data: tuple[list, list, list, list]) -> Part:
    import numpy as np

    pos, nrm, uv, idx = data
    return Part(name, material, np.asarray(pos, np.float32), np.asarray(nrm, np.float32),
                np.asarray(uv, np.float32), np.asarray(idx, np.uint16))


def framed_picture(width: float, height: float, frame: float = 0.02, depth: float = 0.02,
                   recess: float = 0.005) -> list[Part]:
    """The picture, its frame (four bars) and the back board.  ``frame`` 0 gives the bare picture on a board."""
    hw = width / 2
    y0, y1 = frame, frame + height  # the picture's bottom and top
    zp = max(depth - recess, depth * 0.5) if frame > 0 else depth
    parts = [_part("picture", "picture", _quad([(-hw, y0, zp), (hw, y0, zp), (hw, y1, zp), (-hw, y1, zp)],
                                                (0, 0, 1)))]
    ox = hw + frame
    if frame > 0:
        bars = [
            _box(-ox, ox, 0.0, frame, 0.0, depth),  # bottom
            _box(-ox, ox, y1, y1 + frame, 0.0, depth),  # top
            _box(-ox, -hw, frame, y1, 0.0, depth),  # left
            _box(hw, ox, frame, y1, 0.0, depth),  # right
        ]
        parts.append(_part("frame", "frame", _merge(bars)))
    top = y1 + frame
    board = _box(-ox, ox, 0.0, top, 0.0, min(0.003, zp * 0.5)) if frame > 0 else \
        _box(-hw, hw, y0, y1, 0.0, depth * 0.9)
    parts.append(_part("back", "back", board))
    return parts


def flip_v(uvs: Any) -> Any:
    """glTF UVs (v down from the top) as USD's st (t up from the bottom)."""
    out = uvs.copy()
    out[:, 1] = 1.0 - out[:, 1]
    return out
