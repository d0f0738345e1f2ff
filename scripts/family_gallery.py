"""Render the README's family gallery: one image per CLIP-steered generator at the same prompt and seed.

Every model here is tiny and random-initialised (CLIP, VQGAN, StyleGAN2): no trained
weights exist on the build machine, so the pictures show what each parametrisation
does under CLIP's (random) steering, not what the trained family looks like.

    PYTHONPATH=. .venv/bin/python scripts/family_gallery.py docs/gallery [NAME ... | moving]
"""
from __future__ import annotations

import logging
import shutil
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from renderer.base import RenderContext, RenderRequest, build  # noqa: E402

PROMPT = (("a lighthouse in a storm", 1.0),)
SEED = 1
SIZE = 128
COMMON = {"clip_models": ["tiny"], "steps": 60, "cutouts": 16, "checkpoint_every": 0, "progress_every": 0}
GENERATORS = {
    "vqgan_clip": {"vqgan": "tiny", "lr": 0.1},
    "pixels": {"lr": 0.05},
    "fourier": {"lr": 0.05},
    "siren": {"layers": 6, "hidden": 64, "lr": 1e-3},
    "clipdraw": {"strokes": 96, "max_width": 8.0},
    "stylegan_clip": {"lr": 0.03},
}


def main(out: Path, only: set[str] | None = None) -> None:
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(1)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        from tests.stylegan_helpers import tiny_sg2
        from tests.stylegan_mapping_helpers import mapping_tensors, write_nvlabs_with_mapping

        ckpt = write_nvlabs_with_mapping(tiny_sg2(res=128), mapping_tensors(), tmp / "tiny_sg2.pkl")
        GENERATORS["stylegan_clip"]["checkpoint"] = str(ckpt)
        for name, extra in GENERATORS.items():
            if only and name not in only:
                continue
            ctx = RenderContext(device=torch.device("cpu"), dtype=torch.float32, weights_dir=tmp / "w",
                                work_dir=tmp / name)
            gen = build(name, {**COMMON, **extra}, ctx)
            req = RenderRequest(job_id=0, exhibit="gallery", generator=name, prompts=PROMPT, seed=SEED,
                                width=SIZE, height=SIZE, params={})
            res = gen.render(req, ctx)
            res.image.save(out / f"{name}.png")
            print(name, res.meta["label"], res.meta["losses"]["total"])
        if only and "moving" not in only:
            return
        # a moving piece: Fourier pixels with a story and zoom-and-rotate, as a GIF
        ctx = RenderContext(device=torch.device("cpu"), dtype=torch.float32, weights_dir=tmp / "w",
                            work_dir=tmp / "zoom")
        settings = {**COMMON, "steps": 96, "lr": 0.05, "zoom": {"every": 3, "scale": 1.04, "rotate": 1.5},
                    "story": ["a lighthouse in a storm", "a cathedral of glass"], "timelapse_format": "gif"}
        res = build("fourier", settings, ctx).render(
            RenderRequest(job_id=0, exhibit="gallery", generator="fourier", prompts=PROMPT, seed=SEED, width=SIZE,
                          height=SIZE, params={}), ctx)
        shutil.copy(res.extra_files["timelapse"], out / "fourier-zoom-story.gif")
        print("moving piece", res.extra_files["timelapse"].stat().st_size, "bytes")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "docs" / "gallery", set(sys.argv[2:]) or None)
