"""AR texture packs: square power-of-two textures, a JSON manifest and import notes, zipped.

These are texture packs, not project files: the AR tools' own project formats are
proprietary, so a pack holds what any of them imports (PNG/JPEG textures) at the
sizes and limits each tool documents, plus honest instructions.

* Spark AR Studio (Meta): PNG or JPG, at most 1024 x 1024; PVR/ETC export pads
  textures to a power-of-two square.  Meta closed the Spark AR platform in
  January 2025; the pack stays for archives and for its successors below.
* Lens Studio (Snap): textures no larger than 2048 x 2048, JPG preferred when
  there is no transparency, whole lens under 8 MB.
* Effect House (TikTok): PNG or JPG, square power of two, at most 1024 x 1024
  and under 1 MB per image; 512 x 512 recommended.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from filters.common import choice, piece_summary, sha256, texture_bytes, write_zip
from filters.registry import ExportError, register_exporter

PACK_FORMAT = "kiosk-ar-texture-pack"
PACK_VERSION = 1


@dataclass(frozen=True)
class ToolSpec:
    key: str
    tool: str
    vendor: str
    sizes: tuple[int, ...]  # default texture edge lengths, largest first
    max_size: int
    image_format: str  # "png", "jpg", or "auto" (PNG unless it exceeds max_file_bytes)
    max_file_bytes: int | None
    status: str
    import_steps: tuple[str, ...]
    limits: Mapping[str, Any]
    sources: tuple[str, ...]


SPARK_AR = ToolSpec(
    key="sparkar",
    tool="Spark AR Studio",
    vendor="Meta",
    sizes=(1024, 512),
    max_size=1024,
    image_format="png",
    max_file_bytes=None,
    status="discontinued: Meta closed the Spark AR platform in January 2025; kept for archived projects",
    import_steps=(
        "Open the project in Spark AR Studio.",
        "In the Assets panel click +, choose Import from Computer and pick a file from textures/.",
        "Select a material, and under Diffuse choose the imported texture; apply the material to a plane or rectangle.",
        "Use the 512 texture where the piece is small on screen: it keeps the effect light.",
    ),
    limits={"max_texture_px": 1024, "formats": ["png", "jpg"], "power_of_two_square": True},
    sources=(
        "https://sparkar.facebook.com/ar-studio/learn/articles/textures-and-materials/using-textures",
        "https://developers.facebook.com/docs/ar-studio/docs/using-textures-materials/",
    ),
)

LENS_STUDIO = ToolSpec(
    key="lensstudio",
    tool="Lens Studio",
    vendor="Snap",
    sizes=(2048, 1024, 512),
    max_size=2048,
    image_format="jpg",
    max_file_bytes=None,
    status="active",
    import_steps=(
        "Open the project in Lens Studio.",
        "Drag a file from textures/ into the Asset Browser (or use its import button).",
        "Assign the texture to an Image component or to a material's base texture on a plane mesh.",
        "Prefer the 1024 or 512 texture unless the piece fills the screen: lenses must stay under 8 MB.",
    ),
    limits={"max_texture_px": 2048, "formats": ["jpg", "png"], "max_lens_mb": 8},
    sources=(
        "https://developers.snap.com/lens-studio/publishing/optimization/texture-optimization",
    ),
)

EFFECT_HOUSE = ToolSpec(
    key="effecthouse",
    tool="Effect House",
    vendor="TikTok",
    sizes=(1024, 512),
    max_size=1024,
    image_format="auto",
    max_file_bytes=1024 * 1024 - 1,
    status="active",
    import_steps=(
        "Open the project in Effect House.",
        "In the Assets panel choose + Add Asset > Import and pick a file from textures/.",
        "Use the texture on a 2D image or on a material of a plane; 512 is the recommended size, "
        "1024 only when fine detail matters.",
    ),
    limits={"max_texture_px": 1024, "max_file_bytes": 1024 * 1024 - 1, "formats": ["png", "jpg"],
            "power_of_two_square": True, "max_package_mb": 8},
    sources=(
        "https://effecthouse.tiktok.com/learn/guides/3d/3d-asset-preparation/",
        "https://effecthouse.tiktok.com/learn/guides/general/effect-guidelines",
    ),
)

TOOLS = {t.key: t for t in (SPARK_AR, LENS_STUDIO, EFFECT_HOUSE)}


def _check_sizes(spec: ToolSpec, sizes: Sequence[int] | None) -> tuple[int, ...]:
    if sizes is None:
        return spec.sizes
    if isinstance(sizes, (str, bytes)) or not isinstance(sizes, Sequence) or not sizes:
        raise ExportError(f"option 'sizes' for {spec.tool} must be a non-empty list of integers, got {sizes!r}")
    for s in sizes:
        if isinstance(s, bool) or not isinstance(s, int) or s < 16 or s > spec.max_size or s & (s - 1):
            raise ExportError(
                f"option 'sizes' for {spec.tool}: {s!r} is not a power of two between 16 and {spec.max_size}"
            )
    return tuple(sorted(set(sizes), reverse=True))


def _encode(image: Any, size: int, fmt: str, max_bytes: int | None, tool: str) -> tuple[bytes, str]:
    """Encode as ``fmt``; "auto" keeps PNG when it fits ``max_bytes`` and steps JPEG quality down otherwise."""
    if fmt in ("png", "auto"):
        data = texture_bytes(image, size, "png", compress_level=6)
        if max_bytes is None or len(data) <= max_bytes:
            return data, "png"
        if fmt == "png":
            raise ExportError(f"{tool}: a {size} px PNG is {len(data)} bytes, over the {max_bytes} byte limit")
    for quality in (92, 88, 82, 75, 65, 50):
        data = texture_bytes(image, size, "jpg", quality=quality)
        if max_bytes is None or len(data) <= max_bytes:
            return data, "jpg"
    raise ExportError(f"{tool}: could not fit a {size} px texture under {max_bytes} bytes")


def build_pack(image: Any, meta: Mapping[str, Any], spec: ToolSpec, basename: str,
               sizes: Sequence[int] | None = None, image_format: str | None = None) -> list[tuple[str, bytes]]:
    """The zip members of one tool's pack: textures/, manifest.json, README.txt."""
    sizes = _check_sizes(spec, sizes)
    fmt = choice("image_format", image_format or spec.image_format, ("png", "jpg", "auto"))
    members: list[tuple[str, bytes]] = []
    textures = []
    for size in sizes:
        data, ext = _encode(image, size, fmt, spec.max_file_bytes, spec.tool)
        path = f"textures/{basename}_{size}.{ext}"
        members.append((path, data))
        textures.append({"path": path, "width": size, "height": size, "format": ext, "bytes": len(data),
                         "sha256": sha256(data), "color_space": "sRGB", "alpha": False})
    w, h = image.size
    manifest = {
        "format": PACK_FORMAT,
        "version": PACK_VERSION,
        "tool": spec.tool,
        "vendor": spec.vendor,
        "tool_status": spec.status,
        "contents": "texture pack only; this is not a project file of the tool",
        "piece": piece_summary(meta),
        "source_image": {"width": w, "height": h, "crop": "centre square" if w != h else "none"},
        "textures": textures,
        "import_steps": list(spec.import_steps),
        "tool_limits": dict(spec.limits),
        "sources": list(spec.sources),
    }
    readme = "\n".join(
        [f"{spec.tool} ({spec.vendor}) texture pack for {basename}", ""]
        + [f"Status: {spec.status}", ""]
        + [f"{i}. {s}" for i, s in enumerate(spec.import_steps, 1)]
        + ["", "Textures:"]
        + [f"  {t['path']}  {t['width']}x{t['height']} {t['format'].upper()}  {t['bytes']} bytes" for t in textures]
        + ["", "manifest.json lists sizes, checksums and the piece's title, prompt and seed.", ""]
    )
    members.append(("manifest.json", json.dumps(manifest, indent=2, ensure_ascii=False).encode("utf-8")))
    members.append(("README.txt", readme.encode("utf-8")))
    return members


def _make_exporter(spec: ToolSpec) -> None:
    def exporter(image: Any, meta: Mapping[str, Any], stage: Path, *, basename: str,
                 sizes: Sequence[int] | None = None, image_format: str | None = None) -> list[Path]:
        members = build_pack(image, meta, spec, basename, sizes, image_format)
        return [write_zip(stage / f"{basename}_{spec.key}.zip", members)]

    exporter.__name__ = f"export_{spec.key}"
    exporter.__doc__ = f"``<base>_{spec.key}.zip``: {spec.tool} texture pack."
    register_exporter(spec.key)(exporter)


for _spec in TOOLS.values():
    _make_exporter(_spec)


def packs_readme(basename: str, specs: Sequence[ToolSpec], files: Sequence[str]) -> str:
    lines = [f"AR packs for {basename}: one zip per desktop tool", "",
             "These are for building an effect in a desktop AR tool. To see the piece on a phone, open its",
             "'View in AR' page instead (the framed 20 cm picture as GLB and USDZ, no app needed).", ""]
    for spec, name in zip(specs, files):
        lines += [f"{name}: {spec.tool} ({spec.vendor})", f"  status: {spec.status}"]
        lines += [f"  {i}. {s}" for i, s in enumerate(spec.import_steps, 1)]
        lines.append("")
    lines.append("Each zip has its own README.txt and manifest.json (sizes, checksums, the tool's limits).")
    return "\n".join(lines) + "\n"


@register_exporter("ar_packs")
def export_ar_packs(image: Any, meta: Mapping[str, Any], stage: Path, *, basename: str,
                    tools: Sequence[str] = ("effecthouse", "lensstudio", "sparkar")) -> list[Path]:
    """``<base>_ar_packs.zip``: README.txt at the top, then one texture pack zip per desktop tool (for the artist)."""
    if isinstance(tools, str) or not tools or any(t not in TOOLS for t in tools):
        raise ExportError(f"option 'tools' must be a non-empty list of {', '.join(sorted(TOOLS))}, got {tools!r}")
    specs = [TOOLS[t] for t in dict.fromkeys(tools)]
    members: list[tuple[str, bytes]] = []
    names = []
    for spec in specs:
        inner = stage / f".{basename}_{spec.key}.zip"
        write_zip(inner, build_pack(image, meta, spec, basename))
        names.append(f"{basename}_{spec.key}.zip")
        members.append((names[-1], inner.read_bytes()))
        inner.unlink()
    members.insert(0, ("README.txt", packs_readme(basename, specs, names).encode("utf-8")))
    return [write_zip(stage / f"{basename}_ar_packs.zip", members)]
