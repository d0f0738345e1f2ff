"""Make docs/screens/family2-tiny-gallery.png: Big Sleep, dVAE+CLIP, DeepDream and CLIP-guided diffusion on
random-initialised models.

Each panel is the generator itself, run through its tiny exhibit's settings (tiny random BigGAN-deep /
dVAE / guided-diffusion UNet / CLIP; an untrained GoogLeNet): what the pipelines do, not what trained weights look like.
Run: .venv/bin/python scripts/family2_gallery.py
"""
import logging
import sys
import tempfile
import time
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import torch  # noqa: E402
from PIL import Image, ImageDraw, ImageFont  # noqa: E402

from exhibits.files import write_png  # noqa: E402
from renderer.base import RenderContext, RenderRequest, build  # noqa: E402

logging.basicConfig(level=logging.ERROR)
PANELS = [  # exhibit file, prompt, canvas, overrides, caption
    ("big_sleep_tiny.toml", "a sunset", (32, 32), {"steps": 40, "lr": 0.1},
     "big_sleep: tiny random BigGAN-deep (32 px) + tiny random CLIP"),
    ("dvae_clip_tiny.toml", "a tree with weeping branches", (96, 96), {"steps": 40},
     "dvae_clip: tiny random dVAE decoder + tiny random CLIP"),
    ("deepdream_tiny.toml", "dogs in the clouds", (192, 128),
     {"octaves": 3, "iterations": 8, "step_size": 0.02, "tile_size": 128, "noise": 0.02},
     "deepdream: untrained GoogLeNet (mixed4c), octaves, tiny random CLIP pull"),
    ("clip_diffusion_tiny.toml", "a lighthouse in a storm", (64, 64), {"steps": 25},
     "clip_diffusion: tiny random guided-diffusion UNet, DDIM, tiny random CLIP"),
]
CELL = 240


def wrap_px(text: str, font, width: int) -> list[str]:
    """Words into lines no wider than ``width`` pixels in ``font`` (captions never run into the next panel)."""
    lines: list[str] = []
    for word in text.split():
        if lines and d.textlength(f"{lines[-1]} {word}", font=font) <= width:
            lines[-1] += f" {word}"
        else:
            lines.append(word)
    return lines


pad, top = 12, 60
sheet = Image.new("RGB", (pad + len(PANELS) * (CELL + pad), top + CELL + 100), (20, 20, 20))
d = ImageDraw.Draw(sheet)
f, fs = ImageFont.load_default(size=16), ImageFont.load_default(size=12)
d.text((pad, 10), "The CLIP-steered family, part two, on random-initialised tiny models: no trained weights",
       fill=(240, 240, 240), font=f)
d.text((pad, 32), "Each picture is the real generator and loop; the models are random, so the pictures are noise "
       "and patterns.", fill=(170, 170, 170), font=fs)
with tempfile.TemporaryDirectory() as tmp:
    for i, (toml_name, prompt, (w, h), over, caption) in enumerate(PANELS):
        gen_cfg = tomllib.loads((ROOT / "exhibits" / toml_name).read_text())["generator"]
        name = gen_cfg.pop("name")
        gen_cfg.pop("instant", None)
        gen_cfg.update(over, checkpoint_every=0)
        ctx = RenderContext(device=torch.device("cpu"), dtype=torch.float32, weights_dir=Path(tmp),
                            work_dir=Path(tmp) / f"w{i}")
        t = time.time()
        res = build(name, gen_cfg, ctx).render(RenderRequest(job_id=i, exhibit=toml_name, generator=name,
                                                             prompts=((prompt, 1.0),), seed=3, width=w, height=h), ctx)
        print(name, round(time.time() - t, 1), "s", res.image.size, res.meta["losses"])
        im = res.image
        scale = CELL / max(im.size)
        im = im.resize((round(im.width * scale), round(im.height * scale)), Image.NEAREST)
        x = pad + i * (CELL + pad)
        sheet.paste(im, (x + (CELL - im.width) // 2, top + (CELL - im.height) // 2))
        d.text((x, top + CELL + 8), f'"{prompt}", {res.image.width}x{res.image.height} px', fill=(220, 220, 220), font=fs)
        for k, line in enumerate(wrap_px(caption, fs, CELL)):
            d.text((x, top + CELL + 26 + 16 * k), line, fill=(150, 150, 150), font=fs)
out = write_png(ROOT / "docs/screens/family2-tiny-gallery.png", sheet,
                {"title": "Big Sleep, dVAE+CLIP, DeepDream, CLIP-guided diffusion on random-initialised tiny models, "
                          "no trained weights"})
print(out, sheet.size)
