"""GLB for web AR: the piece as a framed picture at print size, or a gently bent panel (glTF 2.0 binary).

The picture stands upright facing +Z, the back of its frame on z = 0 and its bottom
on y = 0, at its print size by default (20 cm wide inside a 2 cm frame), which is what
``<model-viewer>`` and Scene Viewer / Quick Look expect for wall or floor placement
(see ``filters.framed``).  The picture's material is non-metallic and fully rough,
and also marked ``KHR_materials_unlit`` (used, not required) so viewers that support
it show the piece's colours unshaded.  ``bend_deg`` > 0 gives the older frameless
bent panel.
"""
from __future__ import annotations

import math
import struct
from pathlib import Path
from typing import Any, Mapping

from exhibits.files import atomic_write_bytes
from filters.common import choice, piece_summary, positive, texture_bytes
from filters.framed import BACK_COLOUR, FRAME_COLOUR, Part, framed_picture
from filters.registry import ExportError, register_exporter

FLOAT, USHORT = 5126, 5123
ARRAY_BUFFER, ELEMENT_ARRAY_BUFFER = 34962, 34963
LINEAR, LINEAR_MIPMAP_LINEAR, CLAMP_TO_EDGE = 9729, 9987, 33071
UNLIT = "KHR_materials_unlit"


def panel_mesh(width: float, height: float, bend_deg: float, segments: int) -> tuple[Any, Any, Any, Any]:
    """Positions, normals, UVs (float32) and triangle indices (uint16) of the panel.

    With ``bend_deg`` > 0 the panel is a cylindrical arc of that total angle around a
    vertical axis in front of it (edges come towards the viewer), keeping its width
    as the arc length.
    """
    import numpy as np

    cols = 1 if bend_deg == 0 else segments
    u = np.linspace(0.0, 1.0, cols + 1)
    if bend_deg == 0:
        x, z = (u - 0.5) * width, np.zeros_like(u)
        nx, nz = np.zeros_like(u), np.ones_like(u)
    else:
        theta = math.radians(bend_deg)
        radius = width / theta
        phi = (u - 0.5) * theta
        x, z = radius * np.sin(phi), radius * (1.0 - np.cos(phi))
        nx, nz = -np.sin(phi), np.cos(phi)
    pos, nrm, uv = [], [], []
    for row, (y, v) in enumerate(((0.0, 1.0), (height, 0.0))):  # bottom row, then top row
        for i in range(cols + 1):
            pos.append((x[i], y, z[i]))
            nrm.append((nx[i], 0.0, nz[i]))
            uv.append((u[i], v))
    idx = []
    top = cols + 1
    for i in range(cols):
        bl, br, tl, tr = i, i + 1, top + i, top + i + 1
        idx += [bl, br, tr, bl, tr, tl]  # counter-clockwise seen from +Z
    return (np.asarray(pos, np.float32), np.asarray(nrm, np.float32), np.asarray(uv, np.float32),
            np.asarray(idx, np.uint16))


def _pad4(data: bytes) -> bytes:
    return data + b"\0" * (-len(data) % 4)


def picture_parts(image: Any, *, width_m: float, bend_deg: float, segments: int, frame_cm: float) -> list[Part]:
    w, h = image.size
    height_m = width_m * h / w
    if bend_deg > 0:
        pos, nrm, uv, idx = panel_mesh(width_m, height_m, bend_deg, segments)
        return [Part("picture", "picture", pos, nrm, uv, idx)]
    return framed_picture(width_m, height_m, frame=frame_cm / 100, depth=0.02 if frame_cm else 0.004)


def _material(g: Any, kind: str) -> Any:
    if kind == "picture":
        return g.Material(name="piece", doubleSided=True, extensions={UNLIT: {}},
                          pbrMetallicRoughness=g.PbrMetallicRoughness(baseColorTexture=g.TextureInfo(index=0),
                                                                      metallicFactor=0.0, roughnessFactor=1.0))
    colour = FRAME_COLOUR if kind == "frame" else BACK_COLOUR
    return g.Material(name=kind, pbrMetallicRoughness=g.PbrMetallicRoughness(
        baseColorFactor=[*colour, 1.0], metallicFactor=0.0, roughnessFactor=0.7 if kind == "frame" else 0.95))


def build_glb(image: Any, meta: Mapping[str, Any], *, width_m: float = 0.2, bend_deg: float = 0.0,
              segments: int = 16, texture_px: int = 1024, image_format: str = "jpg",
              frame_cm: float = 2.0) -> bytes:
    import pygltflib as g

    parts = picture_parts(image, width_m=width_m, bend_deg=bend_deg, segments=segments, frame_cm=frame_cm)
    # Square power-of-two texture (best mipmapping on phones); the UVs undo the stretch.
    img_bytes = texture_bytes(image, texture_px, image_format, quality=90, compress_level=9, square=False)
    mime = "image/jpeg" if image_format == "jpg" else "image/png"

    blob = b""
    views: list[Any] = []
    accessors: list[Any] = []
    primitives = []
    kinds = list(dict.fromkeys(p.material for p in parts))

    def add_view(data: bytes, target: int | None) -> int:
        nonlocal blob
        views.append(g.BufferView(buffer=0, byteOffset=len(blob), byteLength=len(data), target=target))
        blob += _pad4(data)
        return len(views) - 1

    def add_accessor(arr: Any, kind: str, target: int, bounds: bool = False) -> int:
        extra = {"min": arr.min(axis=0).tolist(), "max": arr.max(axis=0).tolist()} if bounds else {}
        accessors.append(g.Accessor(bufferView=add_view(arr.tobytes(), target), componentType=FLOAT,
                                    count=len(arr), type=kind, **extra))
        return len(accessors) - 1

    for part in parts:
        attrs = g.Attributes(POSITION=add_accessor(part.positions, g.VEC3, ARRAY_BUFFER, bounds=True),
                             NORMAL=add_accessor(part.normals, g.VEC3, ARRAY_BUFFER))
        if part.material == "picture":  # only the picture samples a texture
            attrs.TEXCOORD_0 = add_accessor(part.uvs, g.VEC2, ARRAY_BUFFER)
        accessors.append(g.Accessor(bufferView=add_view(part.indices.tobytes(), ELEMENT_ARRAY_BUFFER),
                                    componentType=USHORT, count=len(part.indices), type=g.SCALAR,
                                    min=[int(part.indices.min())], max=[int(part.indices.max())]))
        primitives.append(g.Primitive(attributes=attrs, indices=len(accessors) - 1,
                                      material=kinds.index(part.material), mode=4))
    image_view = add_view(img_bytes, None)

    title = str(meta.get("title") or "piece")
    gltf = g.GLTF2(
        asset=g.Asset(version="2.0", generator="kiosk filters.glb", extras={"piece": piece_summary(meta)}),
        extensionsUsed=[UNLIT],
        scene=0,
        scenes=[g.Scene(name=title, nodes=[0])],
        nodes=[g.Node(name=title, mesh=0)],
        meshes=[g.Mesh(name="framed picture" if len(parts) > 1 else "panel", primitives=primitives)],
        materials=[_material(g, k) for k in kinds],
        samplers=[g.Sampler(magFilter=LINEAR, minFilter=LINEAR_MIPMAP_LINEAR, wrapS=CLAMP_TO_EDGE, wrapT=CLAMP_TO_EDGE)],
        textures=[g.Texture(sampler=0, source=0)],
        images=[g.Image(bufferView=image_view, mimeType=mime, name=f"{title} texture")],
        accessors=accessors,
        bufferViews=views,
        buffers=[g.Buffer(byteLength=len(blob))],
    )
    gltf.set_binary_blob(blob)
    data = b"".join(gltf.save_to_bytes())
    magic, version, length = struct.unpack_from("<4sII", data)
    if magic != b"glTF" or version != 2 or length != len(data):  # cheap self-check of the container
        raise RuntimeError("GLB container self-check failed")
    return data


@register_exporter("glb")
def export_glb(image: Any, meta: Mapping[str, Any], stage: Path, *, basename: str, width_m: float = 0.2,
               bend_deg: float = 0.0, segments: int = 16, texture_px: int = 1024,
               image_format: str = "jpg", frame_cm: float | None = None) -> list[Path]:
    """``<base>.glb``: the framed picture (``frame_cm``, default 2; 0 for none) or a bent panel, for web AR."""
    positive("width_m", width_m, maximum=100)
    positive("bend_deg", bend_deg, allow_zero=True, maximum=180)
    frame_cm = check_frame(frame_cm, bend_deg)
    positive("segments", segments, integer=True, maximum=1000)
    positive("texture_px", texture_px, integer=True, maximum=4096)
    if texture_px < 16 or texture_px & (texture_px - 1):
        raise ExportError(f"option 'texture_px' must be a power of two between 16 and 4096, got {texture_px!r}")
    choice("image_format", image_format, ("jpg", "png"))
    data = build_glb(image, meta, width_m=width_m, bend_deg=bend_deg, segments=segments,
                     texture_px=texture_px, image_format=image_format, frame_cm=frame_cm)
    return [atomic_write_bytes(stage / f"{basename}.glb", data)]


def check_frame(frame_cm: Any, bend_deg: float = 0.0) -> float:
    """``frame_cm`` checked: None means 2 cm for a flat picture and none for a bent panel."""
    if frame_cm is None:
        return 0.0 if bend_deg else 2.0
    positive("frame_cm", frame_cm, allow_zero=True, maximum=50)
    if frame_cm and bend_deg:
        raise ExportError(f"option 'frame_cm' = {frame_cm!r} needs a flat picture; it cannot go with "
                          f"'bend_deg' = {bend_deg!r}")
    return float(frame_cm)
