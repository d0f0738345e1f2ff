"""Export timings: each exporter on one piece, then a 40-piece bundle one at a time versus in parallel.

Run: python benchmarks/bench_filters.py            (40 pieces of 768 px, as the exhibit makes them)
     python benchmarks/bench_filters.py --quick    (8 pieces; a quick mode, not the 40-piece figure)

Part 1's baseline: enlarging the piece to the print raster and encoding it as PNG, the unavoidable
part of any print export; each exporter is reported as a ratio of it.
Part 2's baseline: the same bundles (print PDF + TIFF, AR packs, GLB, USDZ) made one piece at a
time in this process, as before; then ``filters.parallel.export_many`` on every core. Both run
in this same run, on the same pieces. The load average is printed beside every figure: the
machine may be shared.
"""
from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402


def load() -> str:
    one, five, _ = os.getloadavg()
    return f"load {one:.2f} / {five:.2f} (1 / 5 min) on {os.cpu_count()} cores"


def best_of(fn, repeat: int = 3) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def piece(seed: int, size: int = 768) -> Image.Image:
    """A noisy structured picture (compresses like a generated piece, not like a flat test card)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size]
    base = np.stack([x // 3 + seed * 7, y // 3, (x + y) // 6], -1) % 256
    return Image.fromarray(np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8), "RGB")


def per_exporter(tmp: Path) -> None:
    from filters import export
    from filters.printing import build_pdf, print_image

    img = piece(0)
    meta = {"title": "bench", "prompt": "a doorway into fog", "seed": 1, "sigma": 1.25}
    src = tmp / "piece.png"
    img.save(src)

    def baseline() -> None:
        raster, _ = print_image(img, 2363, 2363, 36, upscaler="lanczos")
        raster.save(io.BytesIO(), format="PNG", compress_level=3)

    t0 = best_of(baseline)
    print(f"\n== one 768 px piece ({load()})")
    print(f"baseline (Lanczos to 2435 px + PNG encode): {t0:.3f} s")
    t_pdf = best_of(lambda: build_pdf(img, meta, width_cm=20, height_cm=20, bleed_mm=3, dpi=300, crop_marks=True,
                                      caption="page"), 1)
    print(f"print PDF/A alone (resampling + sharpening, Flate picture): {t_pdf:.3f} s ({t_pdf / t0:.2f}x baseline)")
    for name in ("print", "ar_packs", "sparkar", "lensstudio", "effecthouse", "glb", "usdz"):
        out = tmp / name
        t = best_of(lambda: export(name, src, meta, out), 1)
        sizes = ", ".join(f"{p.name} {p.stat().st_size / 1e6:.2f} MB" for p in sorted(out.iterdir()))
        print(f"export {name:12s} {t:.3f} s  ({t / t0:.2f}x baseline)  {sizes}  [{load()}]")


def many(tmp: Path, count: int, workers: int) -> None:
    from filters import export
    from filters.parallel import Item, export_many

    srcs = []
    for i in range(count):
        p = tmp / "in" / f"piece-{i}.png"
        p.parent.mkdir(parents=True, exist_ok=True)
        piece(i).save(p, compress_level=1)
        srcs.append(p)
    metas = [{"title": f"bench {i}", "prompt": "Heaven / Hell", "seed": i, "sigma": 0.5 + i / count,
              "piece_id": i} for i in range(count)]
    print(f"\n== {count} bundles (print PDF + TIFF, AR packs, GLB, USDZ) of 768 px pieces")
    print(f"before: {load()}")
    t = time.perf_counter()
    for i, (src, meta) in enumerate(zip(srcs, metas)):
        export("bundle", src, meta, tmp / "seq" / f"piece-{i}", basename=f"piece-{i}")
    t_seq = time.perf_counter() - t
    print(f"one at a time, one process: {t_seq:.1f} s ({t_seq / count:.2f} s a piece)  [{load()}]")
    items = [Item(str(s), m, str(tmp / "par" / f"piece-{i}"), f"piece-{i}") for i, (s, m) in enumerate(zip(srcs,
                                                                                                             metas))]
    t = time.perf_counter()
    result = export_many(items, "bundle", workers=workers, progress=True)
    t_par = time.perf_counter() - t
    assert not result.failed, result.failed
    total = sum(p.stat().st_size for files in result.done.values() for p in files)
    print(f"parallel, {workers} processes: {t_par:.1f} s ({t_par / count:.2f} s a piece), "
          f"{t_seq / t_par:.2f}x the one-at-a-time run, {total / 1e9:.2f} GB written  [{load()}]")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="8 pieces instead of 40 (a quick mode)")
    ap.add_argument("--pieces", type=int, help="how many pieces in part 2")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--skip-single", action="store_true", help="only part 2")
    args = ap.parse_args()
    count = args.pieces or (8 if args.quick else 40)
    with tempfile.TemporaryDirectory(prefix="bench-filters-") as tmp:
        if not args.skip_single:
            per_exporter(Path(tmp))
        many(Path(tmp), count, args.workers)


if __name__ == "__main__":
    main()
