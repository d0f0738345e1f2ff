"""Make docs/screens/stylegan-tiny-sigma-sheet.png: random-initialised SG1/SG2/SG3 synthesis nets across sigma.

Run: .venv/bin/python scripts/stylegan_sigma_sheet.py
"""
import sys
import time
from pathlib import Path
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import torch
from PIL import Image, ImageDraw, ImageFont
from exhibits.files import write_png
from renderer.stylegan.sg1 import SG1Synthesis
from renderer.stylegan.sg2 import SG2Synthesis, sg2_channels
from renderer.stylegan.sg3 import SG3Synthesis
from renderer.stylegan.generator import to_pil

RES, W_DIM, SEED = 128, 512, 7
SIGMAS = [0.25, 0.5, 1.0, 1.5, 2.0, 3.0]
torch.manual_seed(0)
nets = {
    "StyleGAN1 (TF layout)": SG1Synthesis(W_DIM, RES, 3, {r: min(256, 4096 // r) for r in (4, 8, 16, 32, 64, 128)}),
    "StyleGAN2 (NVlabs)": SG2Synthesis(W_DIM, RES, 3, sg2_channels(RES, 8192, 256)),
    "StyleGAN3-T (NVlabs)": SG3Synthesis(W_DIM, RES, 3, channel_base=8192, channel_max=256, num_layers=10,
                                         num_critical=2, margin_size=10, num_fp16_res=0),
}
cell, pad, left, top = RES, 8, 190, 64
sheet = Image.new("RGB", (left + len(SIGMAS) * (cell + pad) + pad, top + len(nets) * (cell + pad) + 40), (20, 20, 20))
d = ImageDraw.Draw(sheet)
f, fs = ImageFont.load_default(size=16), ImageFont.load_default(size=13)
d.text((pad, 8), "Strange Attractions on random-initialised tiny networks, no trained weights", fill=(240, 240, 240), font=f)
d.text((pad, 30), f"ws = randn(num_ws, {W_DIM}) * sigma into each synthesis network ({RES} px), seed {SEED}, noise const",
       fill=(170, 170, 170), font=fs)
for j, s in enumerate(SIGMAS):
    d.text((left + j * (cell + pad) + cell // 2 - 25, top - 18), f"sigma {s:g}", fill=(220, 220, 220), font=fs)
for i, (name, net) in enumerate(nets.items()):
    net.eval().requires_grad_(False)
    y = top + i * (cell + pad)
    d.text((pad, y + cell // 2 - 16), name, fill=(220, 220, 220), font=fs)
    d.text((pad, y + cell // 2 + 2), f"{net.num_ws} ws, random init", fill=(150, 150, 150), font=fs)
    n = torch.randn(net.num_ws, W_DIM, generator=torch.Generator().manual_seed(SEED))
    t = time.time()
    with torch.no_grad():
        imgs = net(torch.stack([n * s for s in SIGMAS]), noise_mode="const")
    print(name, "forward", round(time.time() - t, 2), "s; range", float(imgs.min()), float(imgs.max()), float(imgs.std()))
    for j, img in enumerate(imgs):
        sheet.paste(to_pil(img), (left + j * (cell + pad), y))
d.text((pad, sheet.height - 26), "Untrained: these show what each architecture does with sigma, not what the series looks like.",
       fill=(170, 170, 170), font=fs)
out = write_png(ROOT / "docs/screens/stylegan-tiny-sigma-sheet.png", sheet,
                {"title": "random-initialised tiny networks, no trained weights", "sigmas": SIGMAS, "seed": SEED})
print(out, sheet.size)
