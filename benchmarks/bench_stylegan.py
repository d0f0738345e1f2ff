"""StyleGAN synthesis speed on this machine: images/s and single-image latency at 256/512/1024.

Networks are randomly initialised StyleGAN2 synthesis networks with reduced channel
counts (channel_base / channel_max below; the official 1024px FFHQ net uses 32768 / 512)
so that a CPU run stays within a few minutes.  The baseline is the classic per-sample
loop: for each image, modulate and demodulate the weights and run an ordinary
(non-grouped) convolution, upsampling with a per-sample transposed conv + FIR, written
here and run in the same process on the same weights.  Its images are checked against
ours before timing.  StyleGAN and StyleGAN3 single-image latencies are listed too.
On the CPU our networks also run a batch one sample at a time (measured faster there
than one grouped convolution over the batch: better cache use), so the ratio is about 1;
the last column times the grouped-convolution batch path that runs on CUDA
(``--device cuda``).

    python benchmarks/bench_stylegan.py [--quick]
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from renderer.stylegan.ops import upfirdn2d, upsample2d  # noqa: E402
from renderer.stylegan.sg1 import SG1Synthesis  # noqa: E402
from renderer.stylegan.sg2 import SG2Synthesis, sg2_channels  # noqa: E402
from renderer.stylegan.sg3 import SG3Synthesis  # noqa: E402

CHANNEL_BASE = 8192
CHANNEL_MAX = 128
W_DIM = 512


def classic_loop_sg2(net: SG2Synthesis, ws: torch.Tensor) -> torch.Tensor:
    """Per-sample, non-grouped StyleGAN2 synthesis (the straightforward implementation)."""
    out = []
    for w in ws:
        def modconv(x: torch.Tensor, layer, i: int, demod: bool = True, up: int = 1) -> torch.Tensor:
            s = layer.affine(w[i:i + 1])[0]
            if not demod:
                s = s * layer.weight_gain
            wt = layer.weight * s[None, :, None, None]
            if demod:
                wt = wt * (wt.square().sum(dim=[1, 2, 3], keepdim=True) + 1e-8).rsqrt()
            if up == 1:
                return F.conv2d(x, wt, padding=wt.shape[-1] // 2)
            y = F.conv_transpose2d(x, wt.transpose(0, 1), stride=2)
            return upfirdn2d(y, layer.resample_filter, padding=[1, 1, 1, 1], gain=4)

        def act(x: torch.Tensor, layer) -> torch.Tensor:
            x = x + (layer.noise_const * layer.noise_strength)
            return F.leaky_relu(x + layer.bias.reshape(1, -1, 1, 1), 0.2) * math.sqrt(2)

        x = net.b4.const[None].to(ws.dtype)
        x = act(modconv(x, net.b4.conv1, 0), net.b4.conv1)
        img = modconv(x, net.b4.torgb, 1, demod=False) + net.b4.torgb.bias.reshape(1, -1, 1, 1)
        i = 1
        for res in net.block_resolutions[1:]:
            b = getattr(net, f"b{res}")
            x = act(modconv(x, b.conv0, i, up=2), b.conv0)
            x = act(modconv(x, b.conv1, i + 1), b.conv1)
            img = upsample2d(img, b.resample_filter)
            img = img + modconv(x, b.torgb, i + 2, demod=False) + b.torgb.bias.reshape(1, -1, 1, 1)
            i += 2
        out.append(img)
    return torch.cat(out)


DEVICE = torch.device("cpu")


def timeit(fn: Callable[[], object], reps: int) -> float:
    """Seconds per call: the fastest of ``reps`` calls after one warm-up (robust on a shared machine)."""
    fn()
    best = math.inf
    for _ in range(reps):
        if DEVICE.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if DEVICE.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="256 and 512 only, shorter timing")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    args = parser.parse_args()
    global DEVICE
    DEVICE = torch.device(args.device)
    torch.manual_seed(0)
    torch.set_grad_enabled(False)
    resolutions = (256, 512) if args.quick else (256, 512, 1024)
    reps = 1 if args.quick else 2
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {DEVICE}; "
          f"StyleGAN2 channel_base={CHANNEL_BASE} channel_max={CHANNEL_MAX} w_dim={W_DIM} "
          f"(official: 32768 / 512); batch {args.batch} for throughput")
    header = f"{'net':<10}{'res':>6}{'params':>9}{'ours img/s':>12}{'ours 1-img ms':>15}" \
             f"{'loop img/s':>12}{'loop 1-img ms':>15}{'speed-up':>10}{'max |diff|':>12}{'grouped img/s':>15}"
    print(header)
    print("-" * len(header))
    for res in resolutions:
        net = SG2Synthesis(W_DIM, res, 3, sg2_channels(res, CHANNEL_BASE, CHANNEL_MAX)).eval().to(DEVICE)
        with torch.no_grad():
            for layer in net.modules():
                if hasattr(layer, "noise_strength"):
                    layer.noise_strength.fill_(0.1)
        ws = torch.randn(args.batch, net.num_ws, W_DIM, device=DEVICE)
        diff = float((net(ws) - classic_loop_sg2(net, ws)).abs().max())
        ours_b = timeit(lambda: net(ws), reps)
        loop_b = timeit(lambda: classic_loop_sg2(net, ws), reps)
        grouped = timeit(lambda: net.synthesize(ws, "const", None), reps)
        ours_1 = timeit(lambda: net(ws[:1]), reps + 1)
        loop_1 = timeit(lambda: classic_loop_sg2(net, ws[:1]), reps + 1)
        n_params = sum(p.numel() for p in net.parameters()) / 1e6
        print(f"{'sg2':<10}{res:>6}{n_params:>8.1f}M{args.batch / ours_b:>12.2f}{ours_1 * 1e3:>15.1f}"
              f"{args.batch / loop_b:>12.2f}{loop_1 * 1e3:>15.1f}{loop_b / ours_b:>9.2f}x{diff:>12.2e}"
              f"{args.batch / grouped:>15.2f}")
    # The other families, single-image latency only (no baseline of their own).
    res = 256
    others = {
        "sg1": SG1Synthesis(W_DIM, res, 3, {r: min(CHANNEL_BASE // r, CHANNEL_MAX) for r in sg2_channels(res)}),
        "sg3-t": SG3Synthesis(W_DIM, res, 3, channel_base=CHANNEL_BASE, channel_max=CHANNEL_MAX),
        "sg3-r": SG3Synthesis(W_DIM, res, 3, channel_base=CHANNEL_BASE, channel_max=CHANNEL_MAX,
                              conv_kernel=1, use_radial_filters=True),
    }
    for name, other in others.items():
        other.eval().to(DEVICE)
        ws = torch.randn(1, other.num_ws, W_DIM, device=DEVICE)
        t = timeit(lambda: other(ws), 1)
        n_params = sum(p.numel() for p in other.parameters()) / 1e6
        print(f"{name:<10}{res:>6}{n_params:>8.1f}M{1 / t:>12.2f}{t * 1e3:>15.1f}{'-':>12}{'-':>15}{'-':>10}{'-':>12}{'-':>15}")


if __name__ == "__main__":
    main()
