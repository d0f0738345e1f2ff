"""Exporter timings on a 1024 px noisy piece (the worst case for compression).

Run: python benchmarks/bench_filters.py
Baseline: Lanczos-upscaling the piece to the print raster and encoding it as PNG,
the unavoidable part of any print export. Each exporter is reported as a ratio of it.
"""
from __future__ import annotations

import io
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402


def best_of(fn, repeat: int = 3) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    from filters import export, export_all
    from filters.printing import build_pdf, print_image

    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:1024, 0:1024]
    base = np.stack([x // 4, y // 4, (x + y) // 8], -1) % 256
    arr = np.clip(base + rng.normal(0, 25, base.shape), 0, 255).astype(np.uint8)
    img = Image.fromarray(arr, "RGB")
    meta = {"title": "bench", "prompt": "a doorway into fog", "seed": 1}
    with tempfile.TemporaryDirectory() as tmp:
        piece = Path(tmp) / "piece.png"
        img.save(piece)

        def baseline() -> None:
            raster = print_image(img, 2363, 2363, 36)
            raster.save(io.BytesIO(), format="PNG", compress_level=3)

        t0 = best_of(baseline)
        print(f"baseline (upscale to 2435 px + PNG encode): {t0:.3f} s")

        def pdf_a85() -> None:
            from reportlab import rl_config
            from reportlab.lib.utils import ImageReader
            from reportlab.pdfgen import canvas

            raster = print_image(img, 2363, 2363, 36)
            assert rl_config.useA85  # reportlab's default
            c = canvas.Canvas(io.BytesIO(), pagesize=(584, 584))
            c.drawImage(ImageReader(raster), 0, 0, 584, 584)
            c.showPage()
            c.save()

        t_a85 = best_of(pdf_a85, 1)
        t_pdf = best_of(lambda: build_pdf(img, meta, width_cm=20, height_cm=20, bleed_mm=3, dpi=300,
                                          crop_marks=True, caption="page"), 1)
        print(f"print PDF, reportlab default (ASCII85 image stream): {t_a85:.3f} s  ({t_a85 / t0:.2f}x baseline)")
        print(f"print PDF, binary image stream (ours):              {t_pdf:.3f} s  ({t_pdf / t0:.2f}x baseline, "
              f"{t_a85 / t_pdf:.1f}x faster than the default)")
        for name in ("print", "sparkar", "lensstudio", "effecthouse", "glb"):
            out = Path(tmp) / name
            t = best_of(lambda: export(name, piece, meta, out), 1)
            sizes = ", ".join(f"{p.name} {p.stat().st_size / 1e6:.2f} MB" for p in sorted(out.iterdir()))
            print(f"export {name:12s} {t:.3f} s  ({t / t0:.2f}x baseline)  {sizes}")
        out = Path(tmp) / "all"
        t = best_of(lambda: export_all(piece, meta, out), 1)
        bundle = next(out.glob("*_bundle.zip"))
        print(f"export_all (bundle)  {t:.3f} s  ({t / t0:.2f}x baseline)  bundle {bundle.stat().st_size / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
