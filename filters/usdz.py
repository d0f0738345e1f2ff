"""USDZ for iPhone and iPad Quick Look: the same framed picture as the GLB, written with Pixar's usd-core.

One ``.usdc`` layer (Y up, metres, ``/Root`` as the default prim) with three meshes and
``UsdPreviewSurface`` materials; the piece is a PNG or JPEG texture read through
``UsdUVTexture``.  ``UsdUtils.CreateNewARKitUsdzPackage`` packs layer and texture into
the zip layout ARKit requires (stored, 64-byte aligned).
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Mapping

from exhibits.files import atomic_path
from filters.common import choice, positive, texture_bytes
from filters.framed import BACK_COLOUR, FRAME_COLOUR, Part, flip_v, framed_picture
from filters.glb import check_frame
from filters.registry import ExportError, register_exporter


def _mesh(stage: Any, path: str, part: Part) -> Any:
    from pxr import Sdf, UsdGeom, Vt

    mesh = UsdGeom.Mesh.Define(stage, path)
    tris = part.indices.reshape(-1, 3)
    mesh.CreatePointsAttr(Vt.Vec3fArray.FromNumpy(part.positions))
    mesh.CreateFaceVertexCountsAttr(Vt.IntArray([3] * len(tris)))
    mesh.CreateFaceVertexIndicesAttr(Vt.IntArray(part.indices.astype(int).tolist()))
    mesh.CreateNormalsAttr(Vt.Vec3fArray.FromNumpy(part.normals))
    mesh.SetNormalsInterpolation(UsdGeom.Tokens.vertex)
    mesh.CreateSubdivisionSchemeAttr(UsdGeom.Tokens.none)
    mesh.CreateOrientationAttr(UsdGeom.Tokens.rightHanded)  # counter-clockwise from outside, as in glTF
    mesh.CreateDoubleSidedAttr(part.material == "picture")
    lo, hi = part.positions.min(axis=0), part.positions.max(axis=0)
    mesh.CreateExtentAttr(Vt.Vec3fArray([tuple(map(float, lo)), tuple(map(float, hi))]))
    st = UsdGeom.PrimvarsAPI(mesh).CreatePrimvar("st", Sdf.ValueTypeNames.TexCoord2fArray,
                                                  UsdGeom.Tokens.vertex)
    st.Set(Vt.Vec2fArray.FromNumpy(flip_v(part.uvs)))
    return mesh


def _material(stage: Any, path: str, kind: str, texture: str | None) -> Any:
    from pxr import Gf, Sdf, UsdShade

    mat = UsdShade.Material.Define(stage, path)
    shader = UsdShade.Shader.Define(stage, f"{path}/Surface")
    shader.CreateIdAttr("UsdPreviewSurface")
    shader.CreateInput("metallic", Sdf.ValueTypeNames.Float).Set(0.0)
    shader.CreateInput("roughness", Sdf.ValueTypeNames.Float).Set(1.0 if kind != "frame" else 0.7)
    mat.CreateSurfaceOutput().ConnectToSource(shader.ConnectableAPI(), "surface")
    if texture is None:
        colour = FRAME_COLOUR if kind == "frame" else BACK_COLOUR
        shader.CreateInput("diffuseColor", Sdf.ValueTypeNames.Color3f).Set(Gf.Vec3f(*colour))
        return mat
    reader = UsdShade.Shader.Define(stage, f"{path}/StReader")
    reader.CreateIdAttr("UsdPrimvarReader_float2")
    st_input = mat.CreateInput("frame:stPrimvarName", Sdf.ValueTypeNames.String)
    st_input.Set("st")
    reader.CreateInput("varname", Sdf.ValueTypeNames.String).ConnectToSource(st_input)
    tex = UsdShade.Shader.Define(stage, f"{path}/Texture")
    tex.CreateIdAttr("UsdUVTexture")
    tex.CreateInput("file", Sdf.ValueTypeNames.Asset).Set(texture)
    tex.CreateInput("sourceColorSpace", Sdf.ValueTypeNames.Token).Set("sRGB")
    tex.CreateInput("wrapS", Sdf.ValueTypeNames.Token).Set("clamp")
    tex.CreateInput("wrapT", Sdf.ValueTypeNames.Token).Set("clamp")
    tex.CreateInput("st", Sdf.ValueTypeNames.Float2).ConnectToSource(reader.ConnectableAPI(), "result")
    tex.CreateOutput("rgb", Sdf.ValueTypeNames.Float3)
    shader.CreateInput("diffuseColor", Sdf.ValueTypeNames.Color3f).ConnectToSource(tex.ConnectableAPI(), "rgb")
    # the piece's own colours, as in the GLB's unlit material: emissive carries them in dim rooms too
    shader.CreateInput("emissiveColor", Sdf.ValueTypeNames.Color3f).ConnectToSource(tex.ConnectableAPI(), "rgb")
    return mat


def build_usdz(image: Any, meta: Mapping[str, Any], dest: Path, *, width_m: float = 0.2, frame_cm: float = 2.0,
               texture_px: int = 1024, image_format: str = "jpg") -> Path:
    """Write ``dest`` (a .usdz) atomically."""
    from pxr import Kind, Sdf, Usd, UsdGeom, UsdShade, UsdUtils

    w, h = image.size
    parts = framed_picture(width_m, width_m * h / w, frame=frame_cm / 100, depth=0.02 if frame_cm else 0.004)
    tex_name = f"textures/piece.{image_format}"
    with tempfile.TemporaryDirectory(prefix="kiosk-usdz-") as tmp:
        work = Path(tmp)
        (work / "textures").mkdir()
        (work / tex_name).write_bytes(texture_bytes(image, texture_px, image_format, quality=90, compress_level=9,
                                                    square=False))
        layer = work / "piece.usdc"
        stage = Usd.Stage.CreateNew(str(layer))
        UsdGeom.SetStageUpAxis(stage, UsdGeom.Tokens.y)
        UsdGeom.SetStageMetersPerUnit(stage, UsdGeom.LinearUnits.meters)
        root = UsdGeom.Xform.Define(stage, "/Root")
        Usd.ModelAPI(root).SetKind(Kind.Tokens.component)
        stage.SetDefaultPrim(root.GetPrim())
        title = str(meta.get("title") or "piece")
        stage.GetRootLayer().documentation = f"{title}: framed picture, {width_m * 100:g} cm wide (kiosk filters.usdz)"
        root.GetPrim().SetCustomDataByKey("kiosk:title", title)
        if meta.get("seed") is not None:
            root.GetPrim().SetCustomDataByKey("kiosk:seed", int(meta["seed"]))
        UsdGeom.Scope.Define(stage, "/Root/Materials")
        for part in parts:
            mesh = _mesh(stage, f"/Root/{part.name}", part)
            mat = _material(stage, f"/Root/Materials/{part.material}", part.material,
                            tex_name if part.material == "picture" else None)
            UsdShade.MaterialBindingAPI.Apply(mesh.GetPrim()).Bind(mat)
        stage.GetRootLayer().Save()
        with atomic_path(dest) as tmp_dest:
            packed = Path(tmp) / "piece.usdz"
            if not UsdUtils.CreateNewARKitUsdzPackage(Sdf.AssetPath(str(layer)), str(packed)):
                raise ExportError(f"usd-core could not pack {dest.name}")
            Path(tmp_dest).write_bytes(packed.read_bytes())
    return dest


@register_exporter("usdz")
def export_usdz(image: Any, meta: Mapping[str, Any], stage: Path, *, basename: str, width_m: float = 0.2,
                frame_cm: float | None = None, texture_px: int = 1024, image_format: str = "jpg") -> list[Path]:
    """``<base>.usdz``: the framed picture at true size for iOS Quick Look."""
    positive("width_m", width_m, maximum=100)
    frame_cm = check_frame(frame_cm)
    positive("texture_px", texture_px, integer=True, maximum=4096)
    if texture_px < 16 or texture_px & (texture_px - 1):
        raise ExportError(f"option 'texture_px' must be a power of two between 16 and 4096, got {texture_px!r}")
    choice("image_format", image_format, ("jpg", "png"))
    return [build_usdz(image, meta, stage / f"{basename}.usdz", width_m=width_m, frame_cm=frame_cm,
                       texture_px=texture_px, image_format=image_format)]
