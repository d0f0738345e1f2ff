"""Pictures of what the exporters make, for the README: ``python scripts/export_screens.py docs/screens``.

* ``print-page-1.png`` / ``print-page-2.png``: the 20 cm print PDF rasterised with pdftoppm (picture, caption);
* ``contact-sheet-page.png``: the first A4 page of a contact-sheet PDF;
* ``upscale-crop.png``: a 100 % crop of the print raster, plain Lanczos beside the weights-free resampling;
* ``phone-ar.png``: the "View in AR" page in headless Chromium at a phone viewport, offline.

The pieces are the web app's sample pictures (no model weights here).
"""
from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def rasterise(pdf: Path, out_prefix: Path, dpi: int = 60) -> list[Path]:
    subprocess.run(["pdftoppm", "-png", "-r", str(dpi), str(pdf), str(out_prefix)], check=True)
    return sorted(out_prefix.parent.glob(out_prefix.name + "-*.png"))


def upscale_crop(image, out: Path) -> None:
    """Source pixels (nearest), plain Lanczos and the fallback: the same 256 px of the print raster at 100 %.

    ``image`` is enlarged by 3.08 (768 px to the 2363 px of a 20 cm print at 300 ppi).
    """
    from PIL import Image, ImageDraw, ImageFont

    from filters.upscale import resample

    w = image.size[0]
    size = round(w * 2363 / 768)
    cx = cy = size // 2
    box = (cx - 128, cy - 128, cx + 128, cy + 128)
    plain = image.resize((size, size), Image.Resampling.LANCZOS).crop(box)
    careful = resample(image, size, size).crop(box)
    nearest = image.resize((size, size), Image.Resampling.NEAREST).crop(box)
    font = ImageFont.truetype("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf", 15)
    sheet = Image.new("RGB", (3 * 256 + 4 * 12, 256 + 48), (20, 20, 22))
    draw = ImageDraw.Draw(sheet)
    for i, (label, crop) in enumerate((("the piece's own pixels", nearest), ("Lanczos (before)", plain),
                                       ("Lanczos + sharpening (now)", careful))):
        x = 12 + i * (256 + 12)
        sheet.paste(crop, (x, 12))
        draw.text((x, 256 + 20), label, fill=(230, 230, 230), font=font)
    sheet.save(out)


def main(out_dir: str) -> None:
    from PIL import Image

    from exhibits.show import ShowConfig
    from exhibits.store import Store
    from filters import export
    from filters.sheet import contact_sheet_pdf
    from kiosk.web import create_app
    from kiosk.web.screenshots import chromium, live_server, make_piece, sample_image

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="export-screens-") as tmp:
        tmp = Path(tmp)
        img = sample_image(14, 768)
        src = tmp / "piece.png"
        img.save(src)
        meta = {"title": "Entrance to the Heaven realm", "prompt": [["Entrance to the Heaven realm by James Gurney", 1],
                                                                     ["Entrance to the Hell realm by James Gurney", 1]],
                "seed": 14, "sigma": 1.9995, "generator": "default", "exhibit": "doorways", "piece_id": 14,
                "url": "http://192.168.1.20:8080/p/14"}
        pdf, _ = export("print", src, meta, tmp / "print")
        for i, page in enumerate(rasterise(pdf, tmp / "page"), 1):
            page.replace(out / f"print-page-{i}.png")
        items = []
        for k in range(9):
            p = tmp / f"s{k}.png"
            sample_image(30 + k, 384).save(p)
            items.append((p, {"piece_id": 30 + k, "seed": 30 + k, "sigma": 0.4 + 0.2 * k,
                              "prompt": f"Entrance to the realm {k}"}))
        sheet = contact_sheet_pdf(items, tmp / "sheet.pdf", cols=3, title="Doorways · keep · 9 pieces")
        rasterise(sheet, tmp / "sheet")[0].replace(out / "contact-sheet-page.png")
        # detail from the weights-free generator's own output (the sigma sheet), not a smooth sample pattern
        detail = Image.open(Path(__file__).resolve().parents[1] / "docs/screens/default-sigma-sheet.png")
        upscale_crop(detail.convert("RGB").crop((0, 0, 768, 768)), out / "upscale-crop.png")

        store = Store(tmp / "store")
        piece = make_piece(store, "Entrance to the Heaven realm | Entrance to the Hell realm", seed=14,
                           image=img)
        app = create_app(ShowConfig(data_dir=store.root, exhibits=("demo",)), store)
        with live_server(app) as base, chromium() as ctx:
            ctx.route("**/*", lambda r: r.continue_() if r.request.url.startswith((base, "data:", "blob:"))
                      else r.abort())
            page = ctx.new_page()
            page.set_default_timeout(120_000)
            page.goto(f"{base}/p/{piece.id}/ar")  # "being prepared" first, then the viewer by itself
            page.wait_for_selector("#ar-model", state="attached")
            page.wait_for_function("() => { const m = document.querySelector('#ar-model');"
                                   " return m && m.loaded && m.modelIsVisible; }")
            page.wait_for_timeout(800)
            page.screenshot(path=str(out / "phone-ar.png"))
    print("\n".join(str(p) for p in sorted(out.glob("*.png"))))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "docs/screens")
