"""GLB for web AR: the piece as the baseColor texture of a flat or gently bent panel (glTF 2.0 binary).

The panel stands upright in the XY plane facing +Z with its bottom edge on y = 0,
at its print size by default (20 cm wide), which is what ``<model-viewer>`` and
Scene Viewer / Quick Look expect for wall or floor placement.  The material is
non-metallic and fully rough, and also marked ``KHR_materials_unlit`` (used, not
required) so viewers that support it show the piece's colours unshaded.
"""
from __future__ import annotations

import math
import struct
from pathlib import Path
from typing import Any, Mapping

from exhibits.files import atomic_write_bytes
from filters.common import choice, jpeg_bytes, piece_summary, png_bytes, positive
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


def build_glb(image: Any, meta: Mapping[str, Any], *, width_m: float = 0.2, bend_deg: float = 0.0,
              segments: int = 16, texture_px: int = 1024, image_format: str = "jpg") -> bytes:
    import pygltflib as g

    w, h = image.size
    height_m = width_m * h / w
    pos, nrm, uv, idx = panel_mesh(width_m, height_m, bend_deg, segments)
    from PIL import Image

    # Square power-of-two texture (best mipmapping on phones); the UVs undo the stretch.
    tex = image.resize((texture_px, texture_px), Image.Resampling.LANCZOS)
    img_bytes = jpeg_bytes(tex, 90) if image_format == "jpg" else png_bytes(tex, compress_level=9)
    mime = "image/jpeg" if image_format == "jpg" else "image/png"

    blob = b""
    views = []
    for data, target in ((pos.tobytes(), ARRAY_BUFFER), (nrm.tobytes(), ARRAY_BUFFER),
                         (uv.tobytes(), ARRAY_BUFFER), (idx.tobytes(), ELEMENT_ARRAY_BUFFER), (img_bytes, None)):
        views.append(g.BufferView(buffer=0, byteOffset=len(blob), byteLength=len(data), target=target))
        blob += _pad4(data)

    accessors = [
        g.Accessor(bufferView=0, componentType=FLOAT, count=len(pos), type=g.VEC3,
                   min=pos.min(axis=0).tolist(), max=pos.max(axis=0).tolist()),
        g.Accessor(bufferView=1, componentType=FLOAT, count=len(nrm), type=g.VEC3),
        g.Accessor(bufferView=2, componentType=FLOAT, count=len(uv), type=g.VEC2),
        g.Accessor(bufferView=3, componentType=USHORT, count=len(idx), type=g.SCALAR,
                   min=[int(idx.min())], max=[int(idx.max())]),
    ]
    title = str(meta.get("title") or "piece")
    gltf = g.GLTF2(
        asset=g.Asset(version="2.0", generator="kiosk filters.glb", extras={"piece": piece_summary(meta)}),
        extensionsUsed=[UNLIT],
        scene=0,
        scenes=[g.Scene(name=title, nodes=[0])],
        nodes=[g.Node(name=title, mesh=0)],
        meshes=[g.Mesh(name="panel", primitives=[g.Primitive(
            attributes=g.Attributes(POSITION=0, NORMAL=1, TEXCOORD_0=2), indices=3, material=0, mode=4)])],
        materials=[g.Material(
            name="piece",
            pbrMetallicRoughness=g.PbrMetallicRoughness(baseColorTexture=g.TextureInfo(index=0),
                                                        metallicFactor=0.0, roughnessFactor=1.0),
            doubleSided=True,
            extensions={UNLIT: {}},
        )],
        samplers=[g.Sampler(magFilter=LINEAR, minFilter=LINEAR_MIPMAP_LINEAR, wrapS=CLAMP_TO_EDGE, wrapT=CLAMP_TO_EDGE)],
        textures=[g.Texture(sampler=0, source=0)],
        images=[g.Image(bufferView=4, mimeType=mime, name=f"{title} texture")],
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
               image_format: str = "jpg") -> list[Path]:
    """``<base>.glb``: a textured panel for web AR."""
    positive("width_m", width_m, maximum=100)
    positive("bend_deg", bend_deg, allow_zero=True, maximum=180)
    positive("segments", segments, integer=True, maximum=1000)
    positive("texture_px", texture_px, integer=True, maximum=4096)
    if texture_px < 16 or texture_px & (texture_px - 1):
        raise ExportError(f"option 'texture_px' must be a power of two between 16 and 4096, got {texture_px!r}")
    choice("image_format", image_format, ("jpg", "png"))
    data = build_glb(image, meta, width_m=width_m, bend_deg=bend_deg, segments=segments,
                     texture_px=texture_px, image_format=image_format)
    return [atomic_write_bytes(stage / f"{basename}.glb", data)]
