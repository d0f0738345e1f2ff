"""Steps per second for each CLIP-steered generator on the shared loop, against the classic notebook loop.

For every generator (pixels, Fourier pixels, SIREN, CLIPDraw, StyleGAN+CLIP) at 256 and
512 px, two optimisations of the same parametrisation run side by side in this process:

- ours: the generator's own canvas (``make_canvas``) through :func:`renderer.guidance.loop.optimise`
  with the shared ``ClipTerm`` (batched cutouts, one augmentation warp for the batch);
- classic: the 2021 notebooks' loop rebuilt here -- a Python loop that slices each cutout,
  pools it to CLIP's size and augments it with its own kornia calls, then one CLIP forward,
  spherical distance and Adam on the same parameters.

The two are timed in alternating rounds (a warm-up step each first) so load from elsewhere
on the machine falls on both alike; the load average is printed beside every figure.
Models are random-initialised.  By default CLIP is the ViT-B-32 layout at reduced width
(width 256, 4 layers), SIREN is 8 layers of 128, StyleGAN2 a reduced-width network and a step
takes 8 cutouts (a "quick mode", labelled in the output); ``--full`` uses ViT-B-32, Deep Daze's
16x256 SIREN, a StyleGAN2 at channel_base 16384 and 32 cutouts.  Run: ``python benchmarks/bench_family.py [--device cuda]``.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.bench_family2 import build_clip  # noqa: E402  (the same reduced-width CLIP as the part-two bench)
from renderer.base import RenderContext, build  # noqa: E402
from renderer.guidance.loop import Hooks, OptimConfig, Problem, optimise  # noqa: E402
from renderer.vqgan_clip import cutouts as cut  # noqa: E402
from renderer.vqgan_clip.clip_guidance import ClipModel, spherical_dist  # noqa: E402
from renderer.vqgan_clip.losses import ClipTerm  # noqa: E402

GENERATORS = ("pixels", "fourier", "siren", "clipdraw", "stylegan_clip")


def stylegan_checkpoint(folder: Path, full: bool, res: int) -> Path:
    """A random StyleGAN2 with its mapping network, written as an NVlabs pickle (our test writers)."""
    from renderer.stylegan.sg2 import SG2Synthesis, sg2_channels
    from tests.stylegan_mapping_helpers import mapping_tensors, write_nvlabs_with_mapping

    torch.manual_seed(0)
    w_dim = 512 if full else 64
    net = SG2Synthesis(w_dim, res, 3, sg2_channels(res, 16384 if full else 1024, 512 if full else 64))
    return write_nvlabs_with_mapping(net.eval(), mapping_tensors(z_dim=w_dim, w_dim=w_dim, layers=2 if not full else 8),
                                     folder / f"sg2_{res}.pkl")


def settings_for(name: str, full: bool, ckpt: Path | None) -> dict:
    s = {"clip_models": ["tiny"], "cutouts": 32 if full else 8, "checkpoint_every": 0, "progress_every": 0,
         "amp": False}
    if name == "siren":
        s.update(layers=16 if full else 8, hidden=256 if full else 128, lr=1e-4)
    if name == "clipdraw":
        s.update(strokes=256 if full else 128)
    if name == "stylegan_clip":
        s.update(checkpoint=str(ckpt))
    return s


def classic_cutouts(image: torch.Tensor, n: int, size: int, g: torch.Generator) -> torch.Tensor:
    """The notebooks' MakeCutouts: one slice, pool and set of kornia augmentations per cutout, in Python."""
    import kornia

    _, _, h, w = image.shape
    max_size, min_size = min(w, h), min(w, h, size)
    outs = []
    for _ in range(n):
        s = int(float(torch.rand((), generator=g)) * (max_size - min_size) + min_size)
        ox = int(torch.randint(0, w - s + 1, (), generator=g))
        oy = int(torch.randint(0, h - s + 1, (), generator=g))
        crop = image[:, :, oy:oy + s, ox:ox + s]
        crop = F.adaptive_avg_pool2d(crop, size) if s >= size else F.interpolate(crop, (size, size), mode="bilinear")
        crop = kornia.geometry.transform.rotate(crop, (torch.rand(1, generator=g) * 20 - 10).to(crop.device))
        crop = kornia.geometry.transform.shear(crop, ((torch.rand(1, 2, generator=g) * 2 - 1) * 0.1).to(crop.device))
        if float(torch.rand((), generator=g)) < 0.5:
            crop = crop.flip(-1)
        crop = kornia.enhance.adjust_brightness(crop, float(torch.rand((), generator=g)) * 0.1)
        crop = crop + torch.randn(crop.shape, generator=g).to(crop.device) * 0.05
        outs.append(crop.clamp(0, 1))
    return torch.cat(outs)


class Pair:
    """Ours and the classic loop on the same generator canvas and CLIP."""

    def __init__(self, name: str, size: int, clip: ClipModel, full: bool, ckpt: Path | None, device: torch.device,
                 work: Path):
        ctx = RenderContext(device=device, dtype=torch.float32, weights_dir=work / "w", work_dir=work / "setup")
        gen = build(name, settings_for(name, full, ckpt), ctx)
        self.s = gen.settings
        self.name, self.size, self.clip, self.device, self.work = name, size, clip, device, work
        self.target = clip.encode_text(["a lighthouse in a storm"], device)
        self.canvases = {}
        for kind in ("ours", "classic"):
            g = torch.Generator().manual_seed(0)
            self.canvases[kind] = (gen.make_canvas(self.s, size, size, g, device, None, None), g)
        c, g = self.canvases["classic"]
        leaves = [c.params] if isinstance(c.params, torch.Tensor) else list(c.params)
        scale = c.lr_scale or [1.0] * len(leaves)
        self.classic_opt = torch.optim.Adam([{"params": [t], "lr": self.s.lr * k} for t, k in zip(leaves, scale)])
        self.rounds = 0

    def ours(self, steps: int) -> float:
        c, g = self.canvases["ours"]
        term = ClipTerm(clips=[self.clip], targets=[self.target], prompt_weights=torch.tensor([1.0]), generator=g,
                        cutouts=self.s.cutouts, panorama="none", augment=cut.AugmentConfig(), total_steps=steps)
        self.rounds += 1
        stamps: list[float] = []
        t0 = time.perf_counter()
        # Timed to the last step's progress call: optimise() renders the final picture once more after the
        # last step, which is not part of a step.
        optimise(Problem(params=c.params, generate=c.image, terms=[term], constrain=c.constrain, generators=[g],
                         lr_scale=c.lr_scale),
                 OptimConfig(steps=steps, lr=self.s.lr, progress_every=1, fingerprint=f"{self.rounds}"),
                 Hooks(work_dir=self.work / f"ours-{self.rounds}", progress=lambda info: stamps.append(time.perf_counter())))
        return (stamps[-1] - t0) / steps

    def classic(self, steps: int) -> float:
        c, g = self.canvases["classic"]
        t0 = time.perf_counter()
        for _ in range(steps):
            self.classic_opt.zero_grad(set_to_none=True)
            image = c.image(c.params)
            batch = classic_cutouts(image, self.s.cutouts, self.clip.size, g)
            loss = spherical_dist(self.clip.encode_image(batch)[:, None], self.target[None]).mean()
            loss.backward()
            self.classic_opt.step()
            if c.constrain is not None:
                with torch.no_grad():
                    c.constrain(c.params)
        return (time.perf_counter() - t0) / steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--full", action="store_true", help="full-size CLIP, SIREN and StyleGAN2 (slow on a CPU)")
    ap.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    ap.add_argument("--generators", nargs="+", default=list(GENERATORS), choices=GENERATORS)
    ap.add_argument("--steps", type=int, default=2, help="timed steps per round (default 2)")
    ap.add_argument("--rounds", type=int, default=2, help="alternating rounds (default 2)")
    args = ap.parse_args()
    device = torch.device(args.device)
    clip = build_clip(args.full, device)
    mode = "full size" if args.full else ("QUICK MODE: CLIP ViT-B-32 layout at width 256 / 4 layers, SIREN 8x128, "
                                          "CLIPDraw 128 strokes, StyleGAN2 at reduced width, 8 cutouts")
    print(f"device {device}, torch threads {torch.get_num_threads()}, {mode}")
    print(f"{'generator':<14}{'px':>5}{'ours s/step':>13}{'classic s/step':>16}{'ours steps/s':>14}"
          f"{'speed-up':>10}  load avg (1/5/15 min)")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for size in args.sizes:
            ckpt = stylegan_checkpoint(tmp, args.full, size) if "stylegan_clip" in args.generators else None
            for name in args.generators:
                pair = Pair(name, size, clip, args.full, ckpt, device, tmp / f"{name}-{size}")
                pair.ours(1), pair.classic(1)  # warm-up
                ours, classic = [], []
                for _ in range(args.rounds):
                    ours.append(pair.ours(args.steps))
                    classic.append(pair.classic(args.steps))
                o, c = statistics.median(ours), statistics.median(classic)
                load = "/".join(f"{x:.1f}" for x in os.getloadavg())
                print(f"{name:<14}{size:>5}{o:>13.3f}{c:>16.3f}{1 / o:>14.2f}{c / o:>9.2f}x  {load}", flush=True)


if __name__ == "__main__":
    main()
