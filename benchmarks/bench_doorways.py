"""Seconds per VQGAN+CLIP optimisation step: our batched cutouts vs a per-cutout loop of the classic kind.

Both variants share the same models, canvas, prompts and Adam settings in the same
process; only the cutout path differs:

- batched (ours): the generator's ``make_cutouts`` -- crops resized by one ``roi_align`` on CUDA (by a
  slice and area pool per crop on the CPU, where roi_align's backward is single-threaded), then one
  batched affine warp / blur / jitter / noise, one CLIP forward, panorama-weighted spherical distance.
- per-cutout (baseline): a Python loop that slices each crop, pools/resizes it, augments it
  with its own kornia calls, then concatenates for one CLIP forward (the shape of the
  2021 notebooks' ``MakeCutouts``).

Models are random-initialised.  The full-size f16_16384 decoder and ViT-B-32 take tens of
seconds per step on a small CPU, so by default this uses the same architectures at reduced
width (decoder ch=32 with the f16 ch_mult; ViT-B-32 layout with width 256, 4 layers) and says
so in its output; ``--full`` uses the real sizes.  The two variants' steps are taken alternately
(one warm-up step each first), so load from elsewhere on the machine falls on both alike; each point
reports the median and range of several steps and the memory one step adds (CUDA: allocator peak;
CPU: RSS sampled from /proc).  Run: ``python benchmarks/bench_doorways.py [--device cuda]``.
"""
from __future__ import annotations

import argparse
import ctypes
import os
import resource
import statistics
import sys
import threading
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
        ang = ((torch.rand(1, generator=g) * 2 - 1) * cfg.rotate_deg).to(crop.device)
        crop = kornia.geometry.transform.rotate(crop, ang)
        sh = ((torch.rand(1, 2, generator=g) * 2 - 1) * cfg.shear).to(crop.device)
        crop = kornia.geometry.transform.shear(crop, sh)
        if float(torch.rand(1, generator=g)) < cfg.flip_p:
            crop = crop.flip(-1)
        if float(torch.rand(1, generator=g)) < cfg.blur_p:
            crop = kornia.filters.gaussian_blur2d(crop, (5, 5), (cfg.blur_sigma, cfg.blur_sigma))
        crop = kornia.enhance.adjust_brightness(crop, float(torch.rand(1, generator=g)) * cfg.jitter)
        crop = kornia.enhance.adjust_saturation(crop, 1 + float(torch.rand(1, generator=g)) * cfg.jitter)
        crop = crop + torch.randn(crop.shape, generator=g).to(crop.device) * cfg.noise
        outs.append(crop.clamp(0, 1))
    return torch.cat(outs)


class Variant:
    """One optimisation (its own z, Adam and random stream) using either cutout path."""

    def __init__(self, vq: VQGAN, clip: ClipModel, size: int, n_cut: int, batched: bool, device: torch.device):
        self.vq, self.clip, self.n_cut, self.batched, self.device = vq, clip, n_cut, batched, device
        self.g = torch.Generator().manual_seed(0)
        self.width, self.height = size * 2, size  # a panorama, the Doorways shape
        self.z = vq.random_latent(self.height, self.width, self.g).to(device).requires_grad_(True)
        self.targets = clip.encode_text(["entrance to heaven", "entrance to hell"], device)
        self.weights = torch.tensor([1.0, 1.0])
        self.opt = torch.optim.Adam([self.z], lr=0.1)
        self.aug_cfg = cut.AugmentConfig()

    def step(self) -> None:
        self.opt.zero_grad(set_to_none=True)
        image = self.vq.synth(self.z)
        boxes = cut.sample_boxes(self.n_cut, self.width, self.height, self.clip.size, 1.0, self.g)
        if self.batched:
            batch = cut.make_cutouts(image, boxes, self.clip.size, cut.sample_augment(boxes, self.aug_cfg, self.g))
        else:
            batch = per_cutout_loop(image, boxes, self.clip.size, self.aug_cfg, self.g)
        posw = prompt_position_weights(boxes.x_centre, self.weights, "linear").to(self.device)
        loss = prompt_loss(self.clip.encode_image(batch), self.targets, self.weights.to(self.device), posw)
        loss.backward()
        self.opt.step()


class PeakMemory:
    """Peak memory of one step: CUDA's allocator counters, or RSS sampled from /proc on the CPU."""

    def __init__(self, device: torch.device, every: float = 0.004):
        self.device, self.every = device, every
        self._peak = 0
        self._on = threading.Event()
        self._quit = threading.Event()
        self._page = os.sysconf("SC_PAGE_SIZE")
        self._libc = None
        if device.type == "cpu":
            try:
                self._libc = ctypes.CDLL("libc.so.6")
            except OSError:
                self._libc = None
            threading.Thread(target=self._sample, daemon=True).start()

    def _rss(self) -> int:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * self._page

    def _sample(self) -> None:
        while not self._quit.is_set():
            if not self._on.wait(0.5):
                continue
            self._peak = max(self._peak, self._rss())
            time.sleep(self.every)

    def start(self) -> int:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            return torch.cuda.memory_allocated(self.device)
        if self._libc is not None:
            self._libc.malloc_trim(0)  # hand freed arenas back so the next step's growth is visible
        base = self._rss()
        self._peak = base
        self._on.set()
        return base

    def stop(self) -> int:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            return torch.cuda.max_memory_allocated(self.device)
        self._on.clear()
        self._peak = max(self._peak, self._rss())
        return self._peak

    def close(self) -> None:
        self._quit.set()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(vq: VQGAN, clip: ClipModel, size: int, n_cut: int, steps: int, device: torch.device,
            mem: PeakMemory) -> dict[str, dict[str, float]]:
    """Both variants, one warm-up step each, then ``steps`` timed steps taken alternately.

    Alternating puts any load from elsewhere on the machine on both variants alike.  Memory is
    measured on the warm-up steps only (trimming the heap and sampling RSS would disturb the timings).
    Per variant: median and min/max seconds per step, and the memory one step adds.
    """
    variants = {"batched": Variant(vq, clip, size, n_cut, True, device),
                "loop": Variant(vq, clip, size, n_cut, False, device)}
    times: dict[str, list[float]] = {k: [] for k in variants}
    growth: dict[str, float] = {}
    for name, v in variants.items():
        base = mem.start()
        v.step()
        growth[name] = (mem.stop() - base) / 2**20
    for _ in range(steps):
        for name, v in variants.items():
            _sync(device)
            t = time.perf_counter()
            v.step()
            _sync(device)
            times[name].append(time.perf_counter() - t)
    return {k: {"median": statistics.median(ts), "min": min(ts), "max": max(ts), "n": len(ts),
                "mem_mib": growth[k]} for k, ts in times.items()}


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
    _sync(image.device)
    return (time.perf_counter() - t) / reps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--full", action="store_true", help="full-size models (slow on a CPU)")
    ap.add_argument("--steps", type=int, default=4, help="timed steps per variant and point (after one warm-up)")
    ap.add_argument("--large-steps", type=int, default=2,
                    help="timed steps for canvases of height 768 and above (they are slow on a CPU)")
    ap.add_argument("--sizes", default="256,512,768", help="canvas heights; widths are twice that")
    ap.add_argument("--cuts", default="32,64", help="cutout counts")
    ap.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    args = ap.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    vq, clip, note = build_models(args.full)
    vq, clip.model = vq.to(device), clip.model.to(device)
    mem = PeakMemory(device)
    mem_note = "CUDA peak allocated above the step's start" if device.type == "cuda" else \
        "peak RSS growth within the warm-up step, sampled every 4 ms"
    print(f"models: {note}; device: {device}; torch threads: {torch.get_num_threads()}")
    print("s/step: median [min-max] of N timed steps per variant, taken alternately after one warm-up step each")
    print(f"{'canvas':>10} {'cuts':>5} {'N':>2} {'batched s/step':>22} {'per-cutout s/step':>22} {'ratio':>6} "
          f"{'cutouts-only':>12} {'mem MiB batched':>16} {'mem MiB loop':>13}")
    t0 = time.perf_counter()
    for size in (int(x) for x in args.sizes.split(",")):
        for n_cut in (int(x) for x in args.cuts.split(",")):
            steps = args.large_steps if size >= 768 else args.steps
            r = measure(vq, clip, size, n_cut, steps, device, mem)
            img = torch.rand(1, 3, size, 2 * size, device=device)
            c_fast = cutout_only(img, clip, n_cut, True)
            c_slow = cutout_only(img, clip, n_cut, False)
            b, lp = r["batched"], r["loop"]
            print(f"{2 * size:>5}x{size:<4} {n_cut:>5} {b['n']:>2} "
                  f"{b['median']:>7.2f} [{b['min']:.2f}-{b['max']:.2f}]".ljust(40) +
                  f"{lp['median']:>7.2f} [{lp['min']:.2f}-{lp['max']:.2f}]".rjust(22) +
                  f" {lp['median'] / b['median']:>6.2f} {c_slow / c_fast:>12.2f} {b['mem_mib']:>16.0f}"
                  f" {lp['mem_mib']:>13.0f}", flush=True)
    mem.close()
    print(f"total {time.perf_counter() - t0:.0f} s; ratio = per-cutout median / batched median; "
          f"cutouts-only = the same ratio for the cutout stage alone (forward+backward); mem: {mem_note}; "
          f"process peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
