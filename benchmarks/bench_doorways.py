"""Seconds per Doorways (VQGAN+CLIP) optimisation step at real size: ours against the classic loop, and our floor.

By default the real architectures with random weights: the ``vqgan_imagenet_f16_16384`` decoder
(its official ddconfig) and open_clip's ViT-B-32.  ``--quick`` uses the same layouts at reduced
width (decoder ch=32, ViT width 256 with 4 layers) and says so in every line it prints.

Variants, each with its own latent, Adam and random stream, on the same canvas and prompts:

- classic: the 2021 notebooks' loop -- float32, NCHW, and a Python loop that crops, resizes and
  augments each cutout with its own kornia calls before one CLIP forward;
- ours: what the Doorways generator runs -- the worker's precision (``renderer.device.render_dtype``:
  on CUDA bfloat16 or float16 autocast; on the CPU bfloat16 autocast only where it measures faster than
  float32 on that machine, else float32; ``--precision`` forces one), channels-last decoder activations,
  the decoder's upsampling as one transposed convolution (``PolyphaseUpsample``: 2.25x fewer multiply-adds
  than nearest 2x + 3x3) and its swish as the fused ``F.silu``, CLIP's attention with one q/k/v split
  (``SelfAttention``), all cutouts cropped and augmented as one batch (in float32).  ``--winograd on``
  (or ``auto``): in float32 the decoder's 3x3 convolutions at 128 px and up run through NNPACK's Winograd
  kernels on NCHW activations (``renderer.winograd``), as the generator's ``winograd`` setting does.
  Ours and its floor keep freed memory for the next step as the worker does (``renderer.cpu_memory``),
  the classic loop runs with glibc's defaults (large blocks mmapped and zero-filled afresh at every
  step); the mode is switched before each step in the same process.  ``--allocator system`` gives
  glibc's defaults to all three.

Steps are taken alternately (classic, ours, ours' floor, ...) after one warm-up each, so load from
elsewhere on the machine falls on all alike; each figure is the median of the timed steps, printed
with the load average (``os.getloadavg``) seen while they ran.  The floor is what no cutout or loss
code can go below: the decoder's forward+backward and CLIP's forward+backward on a batch of the same
number of cutouts, in ours' precision and layout.  Memory is the RSS a step adds (CUDA: allocator
peak).  Agreement with float32 on a fixed seed: the decoded image, CLIP's embeddings of the same
cutouts and the gradient on the latent (the direction each step moves the picture).

    python benchmarks/bench_doorways.py [--sizes 512] [--aspect 2] [--cuts 64] [--steps 3] [--quick] [--device cuda]
        [--precision auto|float32|bfloat16|float16] [--winograd auto|on|off] [--allocator worker|system]

The default canvas is the 1024x512 panorama; on the CPU its float32 classic step needs about 10 GB
(``--aspect 1`` gives the 512x512 square at about half that).
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import os
import resource
import statistics
import sys
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from renderer import cpu_memory, winograd  # noqa: E402
from renderer.device import cpu_bfloat16_speedup, describe, render_dtype  # noqa: E402

OURS_DTYPE: torch.dtype | None = None  # set in main(): what the worker would render in
from renderer.vqgan_clip import cutouts as cut  # noqa: E402
from renderer.vqgan_clip.clip_guidance import (OPENAI_MEAN, OPENAI_STD, ClipModel, prompt_loss,  # noqa: E402
                                                use_self_attention)
from renderer.vqgan_clip.losses import prompt_position_weights  # noqa: E402
from renderer.vqgan_clip.vqgan import use_taming_layers, VQGAN, VQGANConfig  # noqa: E402

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
    """One optimisation (its own z, Adam and random stream): the classic loop or ours."""

    def __init__(self, vq: VQGAN, clip: ClipModel, size: int, n_cut: int, ours: bool, device: torch.device,
                 amp: torch.dtype | None = None, aspect: float = 2.0):
        self.vq, self.clip, self.n_cut, self.ours, self.device = vq, clip, n_cut, ours, device
        self.amp = (amp or render_dtype(device)) if ours else None
        if self.amp == torch.float32:
            self.amp = None  # float32: no autocast
        self.g = torch.Generator().manual_seed(0)
        self.width, self.height = int(round(size * aspect)), size  # aspect 2: a panorama, the Doorways shape
        self.z = vq.random_latent(self.height, self.width, self.g).to(device).requires_grad_(True)
        self.targets = clip.encode_text(["entrance to heaven", "entrance to hell"], device)
        self.weights = torch.tensor([1.0, 1.0])
        self.opt = torch.optim.Adam([self.z], lr=0.1)
        self.aug_cfg = cut.AugmentConfig()
        # float16 (CUDA without bfloat16) needs loss scaling; bfloat16 and float32 do not
        self.scaler = torch.amp.GradScaler(device.type) if self.amp == torch.float16 else None

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=self.amp or torch.float32, enabled=self.amp is not None)

    def step(self) -> None:
        self.opt.zero_grad(set_to_none=True)
        with self._autocast():
            image = self.vq.synth(self.z)
            boxes = cut.sample_boxes(self.n_cut, self.width, self.height, self.clip.size, 1.0, self.g)
            if self.ours:
                batch = cut.make_cutouts(image, boxes, self.clip.size, cut.sample_augment(boxes, self.aug_cfg, self.g))
            else:
                batch = per_cutout_loop(image, boxes, self.clip.size, self.aug_cfg, self.g)
            posw = prompt_position_weights(boxes.x_centre, self.weights, "linear").to(self.device)
            loss = prompt_loss(self.clip.encode_image(batch), self.targets, self.weights.to(self.device), posw)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.opt)
            self.scaler.update()
        else:
            loss.backward()
            self.opt.step()

    def floor(self) -> None:
        """Decoder forward+backward and CLIP forward+backward on as many cutouts, nothing else."""
        z = self.z.detach().requires_grad_(True)
        cuts = torch.rand(self.n_cut, 3, self.clip.size, self.clip.size, device=self.device, requires_grad=True)
        with self._autocast():
            image = self.vq.synth(z)
            emb = self.clip.encode_image(cuts)
        torch.autograd.backward([image.float().sum(), emb.sum()])


class PeakMemory:
    """Peak memory of one step: CUDA's allocator counters, or RSS sampled from /proc on the CPU."""

    def __init__(self, device: torch.device, every: float = 0.004):
        self.device, self.every = device, every
        self._peak = 0
        self._on = threading.Event()
        self._quit = threading.Event()
        if device.type == "cpu":
            threading.Thread(target=self._sample, daemon=True).start()

    def _sample(self) -> None:
        while not self._quit.is_set():
            if not self._on.wait(0.5):
                continue
            self._peak = max(self._peak, cpu_memory.resident_bytes())
            time.sleep(self.every)

    def trim(self) -> None:
        cpu_memory.release_freed_memory()

    def start(self) -> int:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            return torch.cuda.memory_allocated(self.device)
        cpu_memory.release_freed_memory()  # hand freed memory back so the next step's growth is visible
        base = cpu_memory.resident_bytes()
        self._peak = base
        self._on.set()
        return base

    def stop(self) -> int:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            return torch.cuda.max_memory_allocated(self.device)
        self._on.clear()
        self._peak = max(self._peak, cpu_memory.resident_bytes())
        return self._peak

    def close(self) -> None:
        self._quit.set()


REUSE = {"ours", "floor"}  # as the worker runs them (renderer.cpu_memory); emptied by --allocator system


def allocator_for(name: str) -> None:
    """glibc's malloc as the side named runs: freed memory kept for the next step in ours (and its floor), as the
    worker does; glibc's defaults for the classic loop, as the notebooks ran."""
    if name in REUSE:
        cpu_memory.reuse_freed_memory()
    else:
        cpu_memory.use_system_defaults()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(vq_classic: VQGAN, vq_ours: VQGAN, clip: ClipModel, clip_ours: ClipModel, size: int, n_cut: int, steps: int,
            device: torch.device, mem: PeakMemory, aspect: float = 2.0) -> dict[str, dict[str, float]]:
    """One warm-up each (memory measured there), then ``steps`` rounds of classic, ours, ours' floor."""
    classic = Variant(vq_classic, clip, size, n_cut, False, device, aspect=aspect)
    ours = Variant(vq_ours, clip_ours, size, n_cut, True, device, aspect=aspect)
    runs = {"classic": classic.step, "ours": ours.step, "floor": ours.floor}
    times: dict[str, list[float]] = {k: [] for k in runs}
    loads: list[float] = []
    growth: dict[str, float] = {}
    for name, fn in runs.items():
        allocator_for(name)
        base = mem.start()
        fn()
        growth[name] = (mem.stop() - base) / 2**20
    for _ in range(steps):
        for name, fn in runs.items():
            allocator_for(name)
            _sync(device)
            t = time.perf_counter()
            fn()
            _sync(device)
            times[name].append(time.perf_counter() - t)
            loads.append(os.getloadavg()[0])
            if not REUSE:
                mem.trim()  # hand the step's freed heap back, so the process stays at one step's peak
    out = {k: {"median": statistics.median(ts), "min": min(ts), "max": max(ts), "n": len(ts),
               "mem_mib": growth[k]} for k, ts in times.items()}
    out["load"] = {"median": statistics.median(loads), "min": min(loads), "max": max(loads)}
    return out


def agreement(vq_fp32: VQGAN, vq_ours: VQGAN, clip: ClipModel, clip_ours: ClipModel, size: int, n_cut: int,
              device: torch.device, aspect: float = 2.0) -> dict[str, float]:
    """Ours (reduced precision, channels-last) against float32 NCHW on one fixed seed."""
    g = torch.Generator().manual_seed(1234)
    width = int(round(size * aspect))
    z0 = vq_fp32.random_latent(size, width, g).to(device)
    boxes = cut.sample_boxes(n_cut, width, size, clip.size, 1.0, g)
    aug = cut.sample_augment(boxes, cut.AugmentConfig(), g)
    targets = clip.encode_text(["entrance to heaven", "entrance to hell"], device)
    weights = torch.tensor([1.0, 1.0], device=device)
    posw = prompt_position_weights(boxes.x_centre, weights.cpu(), "linear").to(device)
    res = {}
    for name, vq, model, amp in (("fp32", vq_fp32, clip, None), ("ours", vq_ours, clip_ours, OURS_DTYPE)):
        z = z0.clone().requires_grad_(True)
        with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp not in (None, torch.float32)):
            image = vq.synth(z)
            emb = model.encode_image(cut.make_cutouts(image, boxes, clip.size, aug))
            loss = prompt_loss(emb, targets, weights, posw)
        loss.backward()
        res[name] = (image.detach().float(), emb.detach().float(), float(loss.detach()), z.grad.detach().flatten().float())
        del image, emb, loss, z
    (i32, e32, l32, g32), (i16, e16, l16, g16) = res["fp32"], res["ours"]
    return {"image_max": float((i32 - i16).abs().max()), "image_mean": float((i32 - i16).abs().mean()),
            "emb_cos_min": float(torch.nn.functional.cosine_similarity(e32, e16, dim=-1).min()),
            "loss_rel": abs(l32 - l16) / max(abs(l32), 1e-12),
            "grad_cos": float(torch.nn.functional.cosine_similarity(g32, g16, dim=0))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="reduced-width models (labelled as such)")
    ap.add_argument("--steps", type=int, default=3, help="timed rounds (after one warm-up each)")
    ap.add_argument("--sizes", default="512", help="canvas heights")
    ap.add_argument("--aspect", type=float, default=2.0, help="canvas width / height (2: the Doorways panorama)")
    ap.add_argument("--cuts", default="64", help="cutout counts")
    ap.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    ap.add_argument("--precision", default="auto", help="ours' precision: auto (as the worker chooses), float32, "
                                                        "bfloat16 or float16")
    ap.add_argument("--winograd", choices=("auto", "on", "off"), default="off",
                    help="ours' float32 decoder convolutions through NNPACK's Winograd kernels, as the generator's "
                         "winograd setting (default off, as the generator's)")
    ap.add_argument("--allocator", choices=("worker", "system"), default="worker",
                    help="worker: ours and its floor reuse freed memory as the worker does, the classic loop runs "
                         "with glibc's defaults; system: glibc's defaults for all")
    args = ap.parse_args()
    device = torch.device(args.device)
    global REUSE
    if args.allocator == "system" or device.type != "cpu" or not cpu_memory.available():
        REUSE = set()
    global OURS_DTYPE
    OURS_DTYPE = render_dtype(device, args.precision)
    ours_precision = ("autocast " + str(OURS_DTYPE).removeprefix("torch.")) if OURS_DTYPE != torch.float32 \
        else "float32 (no autocast)"
    if args.precision == "auto" and device.type == "cpu":
        ours_precision += f" [precision auto: bfloat16 measured {cpu_bfloat16_speedup(torch.get_num_threads()):.2f}x float32 here]"
    torch.manual_seed(0)
    vq, clip, note = build_models(not args.quick)
    vq, clip.model = vq.to(device), clip.model.to(device)
    vq_ours = copy.deepcopy(vq)
    # as the Doorways generator decides (winograd = "auto"): NNPACK's Winograd convolutions on NCHW activations
    # where they measured faster than oneDNN here and ours runs in float32; otherwise channels-last
    setting = {"auto": "auto", "on": True, "off": False}[args.winograd]
    wino = OURS_DTYPE == torch.float32 and winograd.wanted(setting, device)
    if wino:
        winograd.use_winograd(vq_ours.decoder)
    else:
        vq_ours.to(memory_format=torch.channels_last)
    use_taming_layers(vq.decoder)  # the classic loop (and the float32 reference): taming's own decoder
    clip_ours = dataclasses.replace(clip, model=copy.deepcopy(clip.model))  # ours: as load_clip builds it
    use_self_attention(clip_ours.model.visual)
    mem = PeakMemory(device)
    mem_note = "CUDA peak allocated above the step's start" if device.type == "cuda" else \
        "peak RSS growth within the warm-up step, sampled every 4 ms"
    tag = "QUICK MODE (reduced width, not the real models)" if args.quick else "real size"
    print(f"models: {note} [{tag}]; device: {describe(device)}; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; ours: {ours_precision}, "
          + (f"NNPACK Winograd 3x3 convolutions (measured {winograd.cpu_speedup(torch.get_num_threads()):.2f}x "
             "oneDNN here), NCHW" if wino else "channels-last")
          + ", batched cutouts; memory: " + ("ours and floor reuse freed blocks as the worker does, classic "
                                             "glibc's defaults" if REUSE else "glibc's defaults for all"))
    print(f"{'canvas':>10} {'cuts':>5} {'classic s/step':>15} {'ours s/step':>12} {'floor s':>8} {'speed-up':>9} "
          f"{'ours/floor':>10} {'MiB classic':>12} {'MiB ours':>9} {'load (min-max)':>16}")
    t0 = time.perf_counter()
    for size in (int(x) for x in args.sizes.split(",")):
        for n_cut in (int(x) for x in args.cuts.split(",")):
            r = measure(vq, vq_ours, clip, clip_ours, size, n_cut, args.steps, device, mem, args.aspect)
            c, o, f, ld = r["classic"], r["ours"], r["floor"], r["load"]
            print(f"{int(round(size * args.aspect)):>5}x{size:<4} {n_cut:>5} {c['median']:>15.2f} {o['median']:>12.2f} {f['median']:>8.2f} "
                  f"{c['median'] / o['median']:>8.2f}x {o['median'] / f['median']:>10.2f} {c['mem_mib']:>12.0f} "
                  f"{o['mem_mib']:>9.0f} {ld['median']:>6.2f} ({ld['min']:.1f}-{ld['max']:.1f})"
                  + ("  [quick]" if args.quick else ""), flush=True)
            a = agreement(vq, vq_ours, clip, clip_ours, size, n_cut, device, args.aspect)
            print(f"{'':>16} agreement with float32 on seed 1234: image max |d| {a['image_max']:.4f}, "
                  f"mean |d| {a['image_mean']:.5f} (pixels in 0..1); CLIP embedding cosine >= {a['emb_cos_min']:.4f}; "
                  f"loss rel. diff {a['loss_rel']:.2e}; latent-gradient cosine {a['grad_cos']:.4f}", flush=True)
    mem.close()
    print(f"total {time.perf_counter() - t0:.0f} s; s/step: median of {args.steps} alternated rounds; speed-up = "
          f"classic / ours; floor = decoder fwd+bwd + CLIP fwd+bwd on the cutout batch in ours' precision; "
          f"mem: {mem_note}; process peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
