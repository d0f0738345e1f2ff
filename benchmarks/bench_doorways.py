"""Seconds per VQGAN+CLIP optimisation step: our batched cutouts vs a per-cutout loop of the classic kind.

Both variants share the same models, canvas, prompts and Adam settings in the same
process; only the cutout path differs:

- batched (ours): one ``roi_align`` for all crops, one batched affine warp / blur / jitter,
  one CLIP forward, panorama-weighted spherical distance.
- per-cutout (baseline): a Python loop that slices each crop, pools/resizes it, augments it
  with its own kornia calls, then concatenates for one CLIP forward (the shape of the
  2021 notebooks' ``MakeCutouts``).

Models are random-initialised.  The full-size f16_16384 decoder and ViT-B-32 take tens of
seconds per step on a small CPU, so by default this uses the same architectures at reduced
width (decoder ch=32 with the f16 ch_mult; ViT-B-32 layout with width 256, 4 layers) and says
so in its output; ``--full`` uses the real sizes.  Run: ``python benchmarks/bench_doorways.py``.
"""
from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from renderer.vqgan_clip import cutouts as cut  # noqa: E402
from renderer.vqgan_clip.clip_guidance import OPENAI_MEAN, OPENAI_STD, ClipModel, prompt_loss  # noqa: E402
from renderer.vqgan_clip.losses import prompt_position_weights  # noqa: E402
from renderer.vqgan_clip.vqgan import VQGAN, VQGANConfig  # noqa: E402

F16_DDCONFIG = dict(double_z=False, z_channels=256, resolution=256, in_channels=3, out_ch=3, ch=128,
                    ch_mult=[1, 1, 2, 2, 4], num_res_blocks=2, attn_resolutions=[16], dropout=0.0)


def build_models(full: bool) -> tuple[VQGAN, ClipModel, str]:
    import open_clip

    torch.manual_seed(0)
    dd = dict(F16_DDCONFIG)
    if full:
        vq = VQGAN(VQGANConfig(ddconfig=dd, n_embed=16384, embed_dim=256))
        model = open_clip.create_model("ViT-B-32", pretrained=None)
        note = "full size: VQGAN f16_16384 ddconfig, ViT-B-32"
    else:
        dd.update(ch=32, z_channels=64)
        vq = VQGAN(VQGANConfig(ddconfig=dd, n_embed=1024, embed_dim=64))
        cfg = open_clip.get_model_config("ViT-B-32")
        cfg["vision_cfg"].update(width=256, layers=4)
        cfg["text_cfg"].update(width=256, heads=4, layers=2)
        cfg["embed_dim"] = 256
        model = open_clip.model.CLIP(**cfg)
        note = ("reduced width (f16 ch_mult with ch=32, 1024 codes; ViT-B-32 layout at 224 px, width 256, "
                "4 layers): the full sizes take tens of seconds per step on this CPU")
    vq = vq.eval().requires_grad_(False)
    model = model.eval().requires_grad_(False)
    clip = ClipModel(name="bench", model=model, size=224, mean=torch.tensor(OPENAI_MEAN).view(1, 3, 1, 1),
                     std=torch.tensor(OPENAI_STD).view(1, 3, 1, 1), tokenizer=open_clip.get_tokenizer("ViT-B-32"),
                     weights="random-init")
    return vq, clip, note


def per_cutout_loop(image: torch.Tensor, boxes: cut.Boxes, size: int, cfg: cut.AugmentConfig,
                    g: torch.Generator) -> torch.Tensor:
    """The classic shape: one crop, resample and augmentation per cutout in Python."""
    import kornia

    outs = []
    for i in range(len(boxes)):
        x0, y0, s = int(boxes.x0[i]), int(boxes.y0[i]), int(boxes.size[i])
        crop = image[:, :, y0:y0 + s, x0:x0 + s]
        crop = torch.nn.functional.adaptive_avg_pool2d(crop, size) if s >= size else \
            torch.nn.functional.interpolate(crop, (size, size), mode="bilinear", align_corners=False)
        ang = (torch.rand(1, generator=g) * 2 - 1) * cfg.rotate_deg
        crop = kornia.geometry.transform.rotate(crop, ang)
        sh = (torch.rand(1, 2, generator=g) * 2 - 1) * cfg.shear
        crop = kornia.geometry.transform.shear(crop, sh)
        if float(torch.rand(1, generator=g)) < cfg.flip_p:
            crop = crop.flip(-1)
        if float(torch.rand(1, generator=g)) < cfg.blur_p:
            crop = kornia.filters.gaussian_blur2d(crop, (5, 5), (cfg.blur_sigma, cfg.blur_sigma))
        crop = kornia.enhance.adjust_brightness(crop, float(torch.rand(1, generator=g)) * cfg.jitter)
        crop = kornia.enhance.adjust_saturation(crop, 1 + float(torch.rand(1, generator=g)) * cfg.jitter)
        crop = crop + torch.randn(crop.shape, generator=g) * cfg.noise
        outs.append(crop.clamp(0, 1))
    return torch.cat(outs)


def run(vq: VQGAN, clip: ClipModel, size: int, n_cut: int, batched: bool, steps: int) -> float:
    g = torch.Generator().manual_seed(0)
    width, height = size * 2, size  # a panorama, the Doorways shape
    z = vq.random_latent(height, width, g).requires_grad_(True)
    targets = clip.encode_text(["entrance to heaven", "entrance to hell"], torch.device("cpu"))
    weights = torch.tensor([1.0, 1.0])
    opt = torch.optim.Adam([z], lr=0.1)
    aug_cfg = cut.AugmentConfig()
    times = []
    for step in range(steps + 1):  # the first step warms up
        t = time.perf_counter()
        opt.zero_grad()
        image = vq.synth(z)
        boxes = cut.sample_boxes(n_cut, width, height, clip.size, 1.0, g)
        if batched:
            batch = cut.make_cutouts(image, boxes, clip.size, cut.sample_augment(boxes, aug_cfg, g))
        else:
            batch = per_cutout_loop(image, boxes, clip.size, aug_cfg, g)
        posw = prompt_position_weights(boxes.x_centre, weights, "linear")
        loss = prompt_loss(clip.encode_image(batch), targets, weights, posw)
        loss.backward()
        opt.step()
        if step:
            times.append(time.perf_counter() - t)
    return min(times)  # the least disturbed step (the machine may be shared)


def cutout_only(image: torch.Tensor, clip: ClipModel, n_cut: int, batched: bool, reps: int = 3) -> float:
    """Forward+backward of the cutout stage alone (no decoder, no CLIP)."""
    g = torch.Generator().manual_seed(1)
    cfg = cut.AugmentConfig()
    image = image.detach().requires_grad_(True)
    t = time.perf_counter()
    for _ in range(reps):
        boxes = cut.sample_boxes(n_cut, image.shape[-1], image.shape[-2], clip.size, 1.0, g)
        out = cut.make_cutouts(image, boxes, clip.size, cut.sample_augment(boxes, cfg, g)) if batched \
            else per_cutout_loop(image, boxes, clip.size, cfg, g)
        out.mean().backward()
    return (time.perf_counter() - t) / reps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--full", action="store_true", help="full-size models (slow on a CPU)")
    ap.add_argument("--steps", type=int, default=1, help="timed steps per variant (after one warm-up)")
    ap.add_argument("--sizes", default="256,512,768", help="canvas heights; widths are twice that")
    args = ap.parse_args()
    torch.manual_seed(0)
    vq, clip, note = build_models(args.full)
    print(f"models: {note}; torch threads: {torch.get_num_threads()}")
    print(f"{'canvas':>10} {'cuts':>5} {'batched s/step':>15} {'per-cutout s/step':>18} {'ratio':>6} "
          f"{'cutouts-only ratio':>19} {'peak RSS MiB':>13}")
    t0 = time.perf_counter()
    for size in (int(s) for s in args.sizes.split(",")):
        for n_cut in (32, 64):
            fast = run(vq, clip, size, n_cut, True, args.steps)
            slow = run(vq, clip, size, n_cut, False, args.steps)
            img = torch.rand(1, 3, size, 2 * size)
            c_fast, c_slow = cutout_only(img, clip, n_cut, True), cutout_only(img, clip, n_cut, False)
            rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            print(f"{2 * size:>5}x{size:<4} {n_cut:>5} {fast:>15.2f} {slow:>18.2f} {slow / fast:>6.2f} "
                  f"{c_slow / c_fast:>19.2f} {rss:>13.0f}", flush=True)
    print(f"total {time.perf_counter() - t0:.0f} s (ratio = per-cutout / batched; peak RSS is the process "
          f"high-water mark so far)")


if __name__ == "__main__":
    main()
