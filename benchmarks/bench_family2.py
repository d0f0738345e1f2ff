"""Steps per second at 256 px: Big Sleep, dVAE+CLIP, DeepDream and CLIP-guided diffusion against the classic
notebook loops.

For each generator, in the same process, on the same random-initialised models, canvas,
prompt and cutout count:

- ours: the registered generator itself (``big_sleep``, ``dvae_clip``, ``deepdream``) with its
  models handed in, each step timed between successive progress callbacks (setup excluded),
  cutout augmentations off so both sides do the same work;
- classic: the 2021 notebooks' loop rebuilt here -- Big Sleep: a BigGAN whose layers recompute
  ``weight_orig / sigma`` through ``torch.nn.utils.spectral_norm`` on every forward (as the
  pytorch-pretrained-biggan module does) and a per-cutout Python loop; dVAE+CLIP:
  ``F.gumbel_softmax`` and the per-cutout loop; DeepDream: the 2015 notebook's ``make_step``
  with the picture kept in NumPy (``np.roll`` jitter, a tensor round trip per step); CLIP-guided
  diffusion: the notebook's ``cond_fn`` with its own UNet call, then ``p_sample`` calling the UNet
  again (ours: one call serves both), per-cutout loop.

The full-size models (BigGAN-deep-256, DALL-E's dVAE decoder, ViT-B/32) take many seconds per
step on a small CPU, so by default the BigGAN, the dVAE and CLIP are reduced in width (same
layouts) and the output says "quick mode"; GoogLeNet is always full size.  ``--full`` uses the real
sizes.  The machine's load average is printed beside every figure.
Run: ``python benchmarks/bench_family2.py [--full] [--steps N] [--device cuda]``.
"""
from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from renderer.base import RenderContext, RenderRequest  # noqa: E402
from renderer.biggan.generator import BigSleepGenerator, parse_settings as bs_settings  # noqa: E402
from renderer.biggan.model import OFFICIAL, random_biggan  # noqa: E402
from renderer.deepdream.generator import DeepDreamGenerator, parse_settings as dd_settings  # noqa: E402
from renderer.deepdream.model import Classifier, LayerTaps, random_classifier  # noqa: E402
from renderer.dvae.generator import DvaeClipGenerator, parse_settings as dv_settings  # noqa: E402
from renderer.dvae.model import DecoderConfig, random_decoder  # noqa: E402
from renderer.vqgan_clip.clip_guidance import OPENAI_MEAN, OPENAI_STD, ClipModel, spherical_dist  # noqa: E402

SIZE = 256
CUTOUTS = 32
PROMPT = "a sunset over the sea"


def load() -> str:
    return "load average %.2f %.2f %.2f" % os.getloadavg()


def build_clip(full: bool, device: torch.device) -> ClipModel:
    import open_clip

    torch.manual_seed(0)
    if full:
        model = open_clip.create_model("ViT-B-32", pretrained=None)
    else:
        cfg = open_clip.get_model_config("ViT-B-32")
        cfg["vision_cfg"].update(width=256, layers=4)
        cfg["text_cfg"].update(width=256, heads=4, layers=2)
        model = open_clip.model.CLIP(**cfg)
    model = model.eval().requires_grad_(False).to(device)
    return ClipModel(name="bench", model=model, size=224, mean=torch.tensor(OPENAI_MEAN).view(1, 3, 1, 1),
                     std=torch.tensor(OPENAI_STD).view(1, 3, 1, 1), tokenizer=open_clip.get_tokenizer("ViT-B-32"),
                     weights="random-init")


def timed_render(gen, settings: dict, device: torch.device, steps: int, width: int = SIZE,
                 height: int = SIZE) -> list[float]:
    """Seconds of each step of the generator's own loop (between successive progress callbacks)."""
    stamps: list[float] = []
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        ctx = RenderContext(device=device, dtype=torch.float32, weights_dir=Path(tmp), work_dir=Path(tmp) / "w",
                            progress=lambda info: stamps.append(time.perf_counter()))
        req = RenderRequest(job_id=1, exhibit="bench", generator=gen.name, prompts=((PROMPT, 1.0),), seed=1,
                            width=width, height=height, params=settings)
        gen.render(req, ctx)
    return [b - a for a, b in zip(stamps, stamps[1:])]


def classic_cutouts(image: torch.Tensor, cutn: int, size: int, g: torch.Generator) -> torch.Tensor:
    """The notebooks' MakeCutouts: a Python loop of random crops, each resized on its own."""
    _, _, h, w = image.shape
    max_size, min_size = min(w, h), min(w, h, size)
    cuts = []
    for _ in range(cutn):
        s = int(torch.rand([], generator=g) * (max_size - min_size) + min_size)
        ox = int(torch.randint(0, w - s + 1, (), generator=g))
        oy = int(torch.randint(0, h - s + 1, (), generator=g))
        cuts.append(F.adaptive_avg_pool2d(image[:, :, oy:oy + s, ox:ox + s], size))
    return torch.cat(cuts)


def classic_clip_loss(clip: ClipModel, image: torch.Tensor, target: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    emb = clip.encode_image(classic_cutouts(image, CUTOUTS, clip.size, g))
    return spherical_dist(emb[:, None], target[None]).mean()


def step_times(step, steps: int) -> list[float]:
    step()  # warm-up, like the generator's first step before its first progress callback
    out = []
    for _ in range(steps):
        t = time.perf_counter()
        step()
        out.append(time.perf_counter() - t)
    return out


def alternate(ours, classic, rounds: int) -> tuple[float, float]:
    """Median steps/s of each, measured in alternating rounds so load from elsewhere falls on both alike."""
    a: list[float] = []
    b: list[float] = []
    for _ in range(rounds):
        a += ours()
        b += classic()
    return 1 / statistics.median(a), 1 / statistics.median(b)


# --------------------------------------------------------------------------- Big Sleep


def bench_big_sleep(full: bool, clip: ClipModel, device: torch.device, steps: int,
                    rounds: int) -> tuple[float, float, str]:
    cfg = OFFICIAL[256]
    if not full:
        cfg = type(cfg)(**{**cfg.__dict__, "channel_width": 32})
    model = random_biggan(cfg).to(device)
    settings = bs_settings({"biggan": "bench", "clip_models": ["bench"], "steps": steps + 1, "cutouts": CUTOUTS,
                            "progress_every": 1, "checkpoint_every": 0, "amp": False, "augment": False})
    gen = BigSleepGenerator.__new__(BigSleepGenerator)  # models handed in instead of loaded from files
    gen.settings, gen.device, gen.weights_dir = settings, device, Path(".")
    gen._models = {"bench": (model, {"name": "bench", "weights": "random-init"})}
    gen._clips = {"bench": (clip, {"name": "bench"})}
    ours = lambda: timed_render(gen, {}, device, steps)  # noqa: E731

    # classic: spectral norm recomputed every forward, per-cutout loop
    sn = copy.deepcopy(model).requires_grad_(False)
    for m in list(sn.modules()):
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
            torch.nn.utils.spectral_norm(m, eps=cfg.eps)
    sn.eval()
    g = torch.Generator().manual_seed(1)
    z = torch.randn(1, cfg.z_dim, device=device, requires_grad=True)
    cls = (torch.randn(1, cfg.num_classes) * 0.3 - 3.9).to(device).requires_grad_(True)
    opt = torch.optim.Adam([z, cls], lr=0.07)
    target = clip.encode_text([PROMPT], device)

    def step() -> None:
        opt.zero_grad()
        classes = torch.sigmoid(cls)
        img = (sn(z, classes, 1.0) + 1) / 2
        loss = classic_clip_loss(clip, img, target, g)
        loss = loss + ((50 * torch.topk(classes, largest=False, dim=1, k=cfg.num_classes - 1)[0]) ** 2).mean()
        loss.backward()
        opt.step()

    ours, classic = alternate(ours, lambda: step_times(step, steps), rounds)
    note = "BigGAN-deep-256" if full else "BigGAN-deep-256 layout, channel_width 32 (quick mode)"
    return ours, classic, note


# --------------------------------------------------------------------------- dVAE + CLIP


def bench_dvae(full: bool, clip: ClipModel, device: torch.device, steps: int, rounds: int) -> tuple[float, float, str]:
    cfg = DecoderConfig() if full else DecoderConfig(n_init=64, n_hid=64, n_blk_per_group=2, vocab_size=1024)
    dec = random_decoder(cfg).to(device)
    settings = dv_settings({"dvae": "bench", "clip_models": ["bench"], "steps": steps + 1, "cutouts": CUTOUTS,
                            "progress_every": 1, "checkpoint_every": 0, "amp": False, "augment": False})
    gen = DvaeClipGenerator.__new__(DvaeClipGenerator)
    gen.settings, gen.device, gen.weights_dir = settings, device, Path(".")
    gen._models = {"bench": (dec, None, {"name": "bench", "weights": "random-init"})}
    gen._clips = {"bench": (clip, {"name": "bench"})}
    ours = lambda: timed_render(gen, {}, device, steps)  # noqa: E731

    g = torch.Generator().manual_seed(1)
    logits = torch.randn(1, cfg.vocab_size, SIZE // 8, SIZE // 8, device=device, requires_grad=True)
    opt = torch.optim.Adam([logits], lr=0.1)
    target = clip.encode_text([PROMPT], device)

    def step() -> None:
        opt.zero_grad()
        img = dec.pixels(F.gumbel_softmax(logits, tau=1.0, hard=False, dim=1))
        classic_clip_loss(clip, img, target, g).backward()
        opt.step()

    ours, classic = alternate(ours, lambda: step_times(step, steps), rounds)
    note = "DALL-E dVAE decoder (n_hid 256, 8192 tokens)" if full else "dVAE layout, n_hid 64, 1024 tokens (quick mode)"
    return ours, classic, note


# --------------------------------------------------------------------------- DeepDream


def bench_deepdream(device: torch.device, steps: int, rounds: int) -> tuple[float, float, str]:
    model = random_classifier("googlenet").to(device)
    settings = dd_settings({"model": "bench", "layers": ["inception4c"], "octaves": 1, "iterations": steps + 1,
                            "tile_size": 512, "checkpoint_every": 0, "progress_every": 1, "amp": False})
    gen = DeepDreamGenerator.__new__(DeepDreamGenerator)
    gen.settings, gen.device, gen.weights_dir = settings, device, Path(".")
    gen._models = {"bench": (Classifier(model, "googlenet"), {"name": "bench", "weights": "random-init"})}
    gen._clips = {}
    ours = lambda: timed_render(gen, {}, device, steps)  # noqa: E731

    # classic: the 2015 notebook's make_step on a NumPy picture
    taps = LayerTaps(model, ["inception4c"])
    clf = Classifier(model, "googlenet")
    rng = np.random.default_rng(0)
    src = np.clip(0.5 + 0.1 * rng.standard_normal((3, SIZE, SIZE)), 0, 1).astype(np.float32)

    def step() -> None:
        nonlocal src
        ox, oy = rng.integers(-32, 33, 2)
        src = np.roll(np.roll(src, ox, -1), oy, -2)
        x = torch.from_numpy(src[None].copy()).to(device).requires_grad_(True)
        (clf.activations(x, taps)["inception4c"].pow(2).sum() / 2).backward()  # the notebook's L2 objective
        g = x.grad[0].cpu().numpy()
        src = src + 0.01 / np.abs(g).mean() * g
        src = np.clip(np.roll(np.roll(src, -ox, -1), -oy, -2), 0, 1)

    ours, classic = alternate(ours, lambda: step_times(step, steps), rounds)
    taps.close()
    return ours, classic, "GoogLeNet (torchvision, full size)"


# --------------------------------------------------------------------------- CLIP-guided diffusion


def bench_diffusion(full: bool, clip: ClipModel, device: torch.device, steps: int,
                    rounds: int) -> tuple[float, float, str]:
    from renderer.diffusion.generator import ClipDiffusionGenerator, parse_settings as df_settings
    from renderer.diffusion.sampling import Diffusion, kept_timesteps, range_loss, tv_loss
    from renderer.diffusion.unet import CONFIGS, UNetConfig, random_unet

    cfg = CONFIGS[256] if full else UNetConfig(image_size=256, num_channels=64, channel_mult=(1, 1, 2, 2, 4, 4))
    unet = random_unet(cfg).to(device)
    settings = df_settings({"model": "bench", "clip_models": ["bench"], "steps": 1000, "sampler": "ddpm",
                            "cutouts": CUTOUTS, "progress_every": 1, "checkpoint_every": 0, "amp": False,
                            "augment": False})
    gen = ClipDiffusionGenerator.__new__(ClipDiffusionGenerator)
    gen.settings, gen.device, gen.weights_dir = settings, device, Path(".")
    gen._models = {("bench", 0): (unet, {"name": "bench", "weights": "random-init"})}
    gen._clips = {"bench": (clip, {"name": "bench"})}
    ours = lambda: timed_render(gen, {"steps": 1000, "skip_timesteps": 1000 - steps - 1}, device, steps)  # noqa: E731

    # classic: the notebook's cond_fn (its own model call) and then p_sample (a second model call)
    d = Diffusion(kept_timesteps(1000, 1000, "ddpm"))
    g = torch.Generator().manual_seed(1)
    target = clip.encode_text([PROMPT], device)
    x = torch.randn(1, 3, SIZE, SIZE, device=device)
    i = [steps + 5]

    def step() -> None:
        nonlocal x
        k = i[0]
        xg = x.detach().requires_grad_(True)
        out = d.p_mean_variance(unet, xg, k, clip_denoised=False)
        fac = (1 - d.ac[k]) ** 0.5
        x_in = out.pred_xstart * fac + xg * (1 - fac)
        loss = classic_clip_loss(clip, x_in.add(1).div(2), target, g) * 1000 \
            + tv_loss(x_in).sum() * 150 + range_loss(out.pred_xstart).sum() * 50
        grad = -torch.autograd.grad(loss, xg)[0]
        with torch.no_grad():
            out = d.p_mean_variance(unet, x, k)
            x = d.ddpm_step(out, x, k, torch.randn(x.shape, generator=g).to(device), grad)
        i[0] = max(1, k - 1)

    ours, classic = alternate(ours, lambda: step_times(step, steps), rounds)
    note = "guided-diffusion 256 UNet" if full else "guided-diffusion 256 layout, 64 channels (quick mode)"
    return ours, classic, note


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--full", action="store_true", help="real model sizes (slow on a CPU)")
    ap.add_argument("--steps", type=int, default=3, help="timed steps per round")
    ap.add_argument("--rounds", type=int, default=2, help="alternating rounds of ours / classic")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--only", choices=("big_sleep", "dvae_clip", "deepdream", "clip_diffusion"), action="append")
    args = ap.parse_args()
    device = torch.device(args.device)
    torch.set_num_threads(max(1, (os.cpu_count() or 2)))
    mode = "full size" if args.full else "quick mode (reduced-width BigGAN, dVAE and CLIP)"
    print(f"{SIZE}x{SIZE} px, {CUTOUTS} cutouts (no augmentation in either), median of {args.rounds} x "
          f"{args.steps} steps each, alternating, {device}, {mode}")
    print(f"CLIP: {'ViT-B-32' if args.full else 'ViT-B-32 layout, width 256, 4 layers'}; {load()}")
    clip = None
    for name in args.only or ("big_sleep", "dvae_clip", "deepdream", "clip_diffusion"):
        if name != "deepdream" and clip is None:
            clip = build_clip(args.full, device)
        if name == "big_sleep":
            ours, classic, note = bench_big_sleep(args.full, clip, device, args.steps, args.rounds)
        elif name == "dvae_clip":
            ours, classic, note = bench_dvae(args.full, clip, device, args.steps, args.rounds)
        elif name == "clip_diffusion":
            ours, classic, note = bench_diffusion(args.full, clip, device, args.steps, args.rounds)
        else:
            ours, classic, note = bench_deepdream(device, args.steps, args.rounds)
        print(f"{name:10s} ours {ours:6.3f} steps/s   classic loop {classic:6.3f} steps/s   "
              f"ratio {ours / classic:4.2f}x   [{note}; {load()}]", flush=True)


if __name__ == "__main__":
    main()
