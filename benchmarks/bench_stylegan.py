"""StyleGAN2 synthesis and checkpoint loading at official size: ours against an NVlabs-equivalent reference.

The networks are the official StyleGAN2(-ADA) synthesis architecture (channel_base 32768,
channel_max 512, conv_clamp 256, const noise) built here with random weights at 256, 512 and
1024 px.  ``--quick`` shrinks the widths (channel_base 8192, channel_max 128) and 256/512 px only,
and labels every line it prints as quick.

The reference is NVlabs' inference path on the CPU, written out in this file on the same weights:
``modulated_conv2d`` with ``fused_modconv`` (per-sample kernels, one grouped convolution for the
batch), ``conv2d_resample`` (transposed convolution, then the 2-D FIR), ``upfirdn2d``'s reference
implementation (zero insertion, pad, depthwise convolution) and ``bias_act``'s reference (bias,
leaky ReLU, gain, clamp, each a new tensor), all in NCHW.  Run by hand beside this on the same
official-size pickles, NVlabs' own ``stylegan2-ada-pytorch`` code gave the same images as this
reference to float rounding and timings within the run-to-run noise of this machine.

Figures are medians of interleaved rounds (reference, ours, ours under bfloat16 autocast, ...) after
one warm-up each, with the load average seen during the rounds.  Agreement is the largest absolute
difference from the float32 reference (images are about -1..1); for bfloat16 also the mean absolute
difference and the PSNR (peak-to-peak 2) of the images clamped to -1..1, as pieces are saved.  The
header says which of the two the worker runs on this CPU (``precision = "auto"``, the ``stylegan``
generator's ``amp`` on): bfloat16 where it measures at least 1.15x float32.

Loading: an official-format pickle of the same 1024 px network (``G``, ``G_ema`` and a
discriminator-sized third network, as training writes them) against the reference loader --
NVlabs' ``pickle.load`` with every embedded storage decoded by ``torch.load`` -- and our safetensors
cache that later loads use.

    python benchmarks/bench_stylegan.py [--quick] [--rounds 3] [--batches 1,4] [--device cuda] [--nvlabs DIR]

``--nvlabs DIR`` (a checkout of NVlabs' ``stylegan2-ada-pytorch``) adds NVlabs' own code: for each size
its ``training.networks.Generator`` is built (random weights, non-zero biases and noise strengths), saved
by its own pickling (``torch_utils.persistence``), and our loader reads that pickle; NVlabs'
``G.synthesis(ws, noise_mode='const', force_fp32=True)`` then runs in the same interleaved rounds, and
loading compares NVlabs' ``legacy.load_network_pkl`` with ours on the pickle NVlabs wrote.  (NVlabs'
``dnnlib`` imports ``requests`` for downloads this never makes; an empty stand-in is used when it is
missing.)

Memory as each side runs it (``--allocator worker``, the default): ours as the render worker does,
freed blocks kept for the next call (``renderer.cpu_memory``), the reference and NVlabs with glibc's
defaults (large blocks mmapped and handed back at every call), switched before each call in the same
process. ``--allocator system`` runs everything with glibc's defaults. The worker asks for transparent
huge pages (``THP_MEM_ALLOC_ENABLE=1``) only where it does not reuse memory; set it in the
environment to measure that case. The header says which.
"""
from __future__ import annotations

import argparse
import copy
import math
import os
import pickle
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from renderer import cpu_memory  # noqa: E402
from renderer.device import cpu_bfloat16_speedup, describe, render_dtype  # noqa: E402
from renderer.stylegan.loaders import load_synthesis  # noqa: E402
from renderer.stylegan.sg2 import SG2Synthesis, sg2_channels  # noqa: E402

W_DIM = 512
OFFICIAL = dict(channel_base=32768, channel_max=512)
QUICK = dict(channel_base=8192, channel_max=128)


# --------------------------------------------------------------------------- the NVlabs-equivalent reference


def ref_upfirdn2d(x: torch.Tensor, f: torch.Tensor, up: int = 1, pad: tuple[int, int, int, int] = (0, 0, 0, 0),
                  gain: float = 1.0) -> torch.Tensor:
    """``upfirdn2d._upfirdn2d_ref``: zero insertion, pad/crop, 2-D depthwise FIR (NCHW)."""
    n, c, h, w = x.shape
    if up > 1:
        x = F.pad(x.reshape(n, c, h, 1, w, 1), [0, up - 1, 0, 0, 0, up - 1]).reshape(n, c, h * up, w * up)
    px0, px1, py0, py1 = pad
    x = F.pad(x, [max(px0, 0), max(px1, 0), max(py0, 0), max(py1, 0)])
    x = x[:, :, max(-py0, 0): x.shape[2] - max(-py1, 0), max(-px0, 0): x.shape[3] - max(-px1, 0)]
    f = (f * gain).flip([0, 1])[None, None].repeat(c, 1, 1, 1).to(x.dtype)
    return F.conv2d(x, f, groups=c)


def ref_modconv(x: torch.Tensor, weight: torch.Tensor, styles: torch.Tensor, demodulate: bool, up: int,
                padding: int, f: torch.Tensor | None) -> torch.Tensor:
    """``modulated_conv2d`` with ``fused_modconv=True``: per-sample kernels, one grouped convolution."""
    n = x.shape[0]
    out_ch, in_ch, kh, kw = weight.shape
    w = weight.unsqueeze(0) * styles.reshape(n, 1, -1, 1, 1)
    if demodulate:
        w = w * (w.square().sum(dim=[2, 3, 4]) + 1e-8).rsqrt().reshape(n, -1, 1, 1, 1)
    x = x.reshape(1, -1, *x.shape[2:])
    w = w.reshape(-1, in_ch, kh, kw)
    if up == 1:
        x = F.conv2d(x, w, padding=padding, groups=n)
    else:  # conv2d_resample: transposed convolution, then the FIR with the remaining padding
        fw = f.shape[-1]
        p0 = padding + (fw + up - 1) // 2 - (kw - 1)
        p1 = padding + (fw - up) // 2 - (kw - up)
        pt = max(min(-p0, -p1), 0)
        wt = w.reshape(n, out_ch, in_ch, kh, kw).transpose(1, 2).reshape(n * in_ch, out_ch, kh, kw)
        x = F.conv_transpose2d(x, wt, stride=up, padding=pt, groups=n)
        x = ref_upfirdn2d(x, f, pad=(p0 + pt, p1 + pt, p0 + pt, p1 + pt), gain=up * up)
    return x.reshape(n, -1, *x.shape[2:])


def ref_bias_act(x: torch.Tensor, b: torch.Tensor, slope: float | None, gain: float, clamp: float | None) -> torch.Tensor:
    x = x + b.reshape(1, -1, 1, 1)
    if slope is not None:
        x = F.leaky_relu(x, slope)
    x = x * gain
    return x.clamp(-clamp, clamp) if clamp is not None else x


def reference_sg2(net: SG2Synthesis, ws: torch.Tensor) -> torch.Tensor:
    """NVlabs' ``SynthesisNetwork.forward`` on the CPU (skip architecture, noise_mode='const', float32)."""

    def affine(layer: Any, w: torch.Tensor) -> torch.Tensor:
        fc = layer.affine
        return torch.addmm(fc.bias * fc.bias_gain, w, (fc.weight * fc.weight_gain).t())

    def synth_layer(layer: Any, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        x = ref_modconv(x, layer.weight, affine(layer, w), True, layer.up, 1, layer.resample_filter)
        x = x + layer.noise_const * layer.noise_strength
        return ref_bias_act(x, layer.bias, 0.2, math.sqrt(2), layer.conv_clamp)

    def torgb(layer: Any, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        x = ref_modconv(x, layer.weight, affine(layer, w) * layer.weight_gain, False, 1, 0, None)
        return ref_bias_act(x, layer.bias, None, 1.0, layer.conv_clamp)

    x = img = None
    i = 0
    for res in net.block_resolutions:
        b = getattr(net, f"b{res}")
        if res == 4:
            x = b.const.unsqueeze(0).repeat(ws.shape[0], 1, 1, 1)
            x = synth_layer(b.conv1, x, ws[:, i])
        else:
            x = synth_layer(b.conv0, x, ws[:, i])
            x = synth_layer(b.conv1, x, ws[:, i + 1])
        y = torgb(b.torgb, x, ws[:, i + b.num_conv])
        if img is not None:
            img = ref_upfirdn2d(img, b.resample_filter, up=2, pad=(2, 1, 2, 1), gain=4)
        img = y if img is None else img + y
        i += b.num_conv
    return img


# --------------------------------------------------------------------------- timing


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


REUSE = {"ours", "bf16", "ours+sha256", "ours cached"}  # as the worker runs; emptied by --allocator system


def allocator_for(name: str) -> None:
    """glibc's malloc as the side named runs: freed memory reused for ours, glibc's defaults for the others."""
    if name in REUSE:
        cpu_memory.reuse_freed_memory()
    else:
        cpu_memory.use_system_defaults()


def rounds(fns: dict[str, Callable[[], Any]], n: int, device: torch.device) -> tuple[dict[str, float], list[float]]:
    """One warm-up each, then ``n`` interleaved rounds; median seconds per name and the load averages seen."""
    for name, fn in fns.items():
        allocator_for(name)
        fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    loads = []
    for _ in range(n):
        for name, fn in fns.items():
            allocator_for(name)
            sync(device)
            t = time.perf_counter()
            fn()
            sync(device)
            times[name].append(time.perf_counter() - t)
            loads.append(os.getloadavg()[0])
    return {k: statistics.median(v) for k, v in times.items()}, loads


def official_net(res: int, widths: dict[str, int], seed: int) -> SG2Synthesis:
    torch.manual_seed(seed)
    net = SG2Synthesis(W_DIM, res, 3, sg2_channels(res, **widths), conv_clamp=256)
    with torch.no_grad():
        for layer in net.modules():
            if hasattr(layer, "noise_strength"):
                layer.noise_strength.fill_(0.1)  # trained networks have non-zero noise strengths
            if hasattr(layer, "bias") and isinstance(layer.bias, torch.nn.Parameter) and layer.bias.ndim == 1:
                layer.bias.normal_(0, 0.1)
    return net.eval().requires_grad_(False)


def nvlabs_code(checkout: Path) -> tuple[Any, Any]:
    """NVlabs' ``training.networks.Generator`` and ``legacy`` module from a stylegan2-ada-pytorch checkout."""
    if not (checkout / "training" / "networks.py").is_file() or not (checkout / "legacy.py").is_file():
        raise SystemExit(f"--nvlabs {checkout}: not a stylegan2-ada-pytorch checkout (training/networks.py, legacy.py)")
    import types

    sys.path.insert(0, str(checkout))
    try:
        import requests  # noqa: F401
    except ImportError:  # dnnlib.util imports it at module level, for downloads only
        sys.modules["requests"] = types.ModuleType("requests")
    import legacy  # type: ignore[import-not-found]
    from training.networks import Generator  # type: ignore[import-not-found]
    return Generator, legacy


def nvlabs_generator(generator_cls: Any, res: int, widths: dict[str, int], seed: int) -> Any:
    """NVlabs' own Generator at official size with random weights, biases and noise strengths as trained ones have."""
    torch.manual_seed(seed)
    g = generator_cls(z_dim=512, c_dim=0, w_dim=W_DIM, img_resolution=res, img_channels=3,
                      mapping_kwargs=dict(num_layers=8),
                      synthesis_kwargs=dict(num_fp16_res=4, conv_clamp=256, **widths))
    with torch.no_grad():
        for layer in g.synthesis.modules():
            if hasattr(layer, "noise_strength"):
                layer.noise_strength.fill_(0.1)
            if hasattr(layer, "bias") and isinstance(layer.bias, torch.nn.Parameter) and layer.bias.ndim == 1:
                layer.bias.normal_(0, 0.1)
    return g.eval().requires_grad_(False)


def bench_synthesis(args: argparse.Namespace, device: torch.device, widths: dict[str, int], quick: str) -> None:
    resolutions = [int(r) for r in args.resolutions.split(",")] if args.resolutions else \
        ((256, 512) if args.quick else (256, 512, 1024))
    batches = [int(b) for b in args.batches.split(",")]
    nv_cls = nvlabs_code(Path(args.nvlabs))[0] if args.nvlabs else None
    nv_head = f"{'NVlabs s':>9} {'vs NVlabs':>9} {'NVlabs max |d|':>15} " if nv_cls else ""
    nv16_head = f"{'bf16 vs NVlabs':>14} " if nv_cls else ""
    print(f"{'res':>5} {'batch':>5} {'reference s':>12} {nv_head}{'ours s':>8} {'speed-up':>9} {'max |d|':>9} "
          f"{'ours bf16 s':>12} {'speed-up':>9} {nv16_head}{'bf16 max |d|':>13} {'bf16 mean |d|':>13} "
          f"{'bf16 PSNR dB':>12} {'load (min-max)':>16}")
    for res in resolutions:
        nv = None
        if nv_cls is not None:  # ours is what our loader makes of the pickle NVlabs' own code wrote
            nv = nvlabs_generator(nv_cls, res, widths, seed=res)
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / f"nvlabs-{res}.pkl"
                with open(path, "wb") as f:
                    pickle.dump(dict(G_ema=nv), f)
                net = load_synthesis(path).net.eval().requires_grad_(False).to(device)
            nv = nv.to(device)
        else:
            net = official_net(res, widths, seed=res).to(device)
        for batch in batches:
            ws = torch.randn(batch, net.num_ws, W_DIM, generator=torch.Generator().manual_seed(batch)).to(device)
            fns: dict[str, Callable[[], Any]] = {"ref": lambda: reference_sg2(net, ws)}
            if nv is not None:
                fns["nvlabs"] = lambda: nv.synthesis(ws, noise_mode="const", force_fp32=True)
            with torch.no_grad():
                ref = reference_sg2(net, ws)
                diff = float((net(ws) - ref).abs().max())
                nv_diff = float((fns["nvlabs"]() - net(ws)).abs().max()) if nv is not None else 0.0
                with torch.autocast(device.type, dtype=torch.bfloat16):
                    d16 = net(ws).float().clamp(-1, 1) - ref.clamp(-1, 1)  # as a piece is saved: clamped
                diff16, mean16 = float(d16.abs().max()), float(d16.abs().mean())
                psnr16 = 10 * math.log10(4 / max(float(d16.square().mean()), 1e-30))  # peak-to-peak 2
                del d16
            del ref

            def ours_bf16() -> Any:
                with torch.autocast(device.type, dtype=torch.bfloat16):
                    return net(ws)

            fns.update(ours=lambda: net(ws), bf16=ours_bf16)
            with torch.no_grad():
                med, loads = rounds(fns, args.rounds, device)
            nv_cols = (f"{med['nvlabs']:>9.3f} {med['nvlabs'] / med['ours']:>8.2f}x {nv_diff:>15.1e} "
                       if nv is not None else "")
            print(f"{res:>5} {batch:>5} {med['ref']:>12.3f} {nv_cols}{med['ours']:>8.3f} {med['ref'] / med['ours']:>8.2f}x "
                  f"{diff:>9.1e} {med['bf16']:>12.3f} {med['ref'] / med['bf16']:>8.2f}x "
                  + (f"{med['nvlabs'] / med['bf16']:>13.2f}x " if nv is not None else "")
                  + f"{diff16:>13.1e} {mean16:>13.1e} {psnr16:>12.1f} "
                  f"{statistics.median(loads):>6.2f} ({min(loads):.1f}-{max(loads):.1f}){quick}", flush=True)
        del net, nv


# --------------------------------------------------------------------------- loading


def _persistent_obj(meta: Any) -> Any:
    return meta  # NVlabs rebuilds the module from meta['state'] without running __init__


class _ReferenceUnpickler(pickle.Unpickler):
    """NVlabs' ``legacy.load_network_pkl`` minus executing the pickled source: every storage via torch.load."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("torch_utils.persistence", "_reconstruct_persistent_obj"):
            return _persistent_obj
        return super().find_class(module, name)


def reference_load(path: Path) -> Any:
    with open(path, "rb") as f:
        return _ReferenceUnpickler(f).load()["G_ema"]


def bench_loading(args: argparse.Namespace, widths: dict[str, int], quick: str) -> None:
    res = 512 if args.quick else 1024
    legacy = None
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"sg2-{res}.pkl"
        if args.nvlabs:  # the pickle NVlabs' own code writes, read by NVlabs' own loader
            nv_cls, legacy = nvlabs_code(Path(args.nvlabs))
            g = nvlabs_generator(nv_cls, res, widths, seed=7)
            with open(path, "wb") as f:
                pickle.dump(dict(G=copy.deepcopy(g), D=copy.deepcopy(g.synthesis), G_ema=g), f)
            del g
        else:
            write_training_pickle(path, official_net(res, widths, seed=7))
        size_mb = path.stat().st_size / 1e6
        cache = Path(tmp) / "cache"
        load_synthesis(path, cache)  # writes the cache

        def nvlabs_load() -> Any:
            with open(path, "rb") as f:
                return legacy.load_network_pkl(f)["G_ema"]

        fns = {"reference": nvlabs_load if legacy is not None else lambda: reference_load(path),
               "ours": lambda: load_synthesis(path),
               "ours+sha256": lambda: load_synthesis(path).sha256,
               "ours cached": lambda: load_synthesis(path, cache)}
        med, loads = rounds(fns, args.rounds, torch.device("cpu"))
    ref_name = "NVlabs' legacy.load_network_pkl" if legacy is not None else "the reference loader"
    print(f"loading a {size_mb:.0f} MB official-format pickle of the {res} px network (reference: {ref_name}): "
          + ", ".join(
        f"{k} {v:.3f} s ({med['reference'] / v:.2f}x)" for k, v in med.items())
          + f"; load {statistics.median(loads):.2f} ({min(loads):.1f}-{max(loads):.1f}){quick}")
    print("  (ours: the network ready, its sha256 still hashing on a background thread; ours+sha256: both done;"
          " ours cached: the safetensors cache written on first load)")


def write_training_pickle(path: Path, net: SG2Synthesis) -> None:
    """An official-format pickle as training writes it: G and G_ema separate, a discriminator of about their size.

    Written with the tests' writer of the NVlabs format (``tests/stylegan_helpers.py``)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    import stylegan_helpers as h

    src = "pass\n"
    g_ema = _generator(net, src, h)
    g = _generator(copy.deepcopy(net), src, h)
    disc = h.persistent_tree(copy.deepcopy(net), src)
    disc.class_name = "Discriminator"
    out = dict(G=g, D=disc, G_ema=g_ema, augment_pipe=None, training_set_kwargs=None)
    with h.official_globals(), open(path, "wb") as f:
        h._NVPickler(f, protocol=3).dump(out)


def _generator(net: SG2Synthesis, src: str, h: Any) -> Any:
    syn_kwargs = dict(w_dim=net.w_dim, img_resolution=net.img_resolution, img_channels=net.img_channels,
                      num_fp16_res=net.num_fp16_res, conv_clamp=net.conv_clamp, architecture="skip")
    synthesis = h.persistent_tree(net, src, syn_kwargs, skip=("w_avg",))
    mapping = h.Persistent("MappingNetwork", h._module_state(), src)
    mapping.state["_buffers"]["w_avg"] = net.w_avg.detach().clone()
    gen = h.Persistent("Generator", h._module_state(), src)
    gen.state["_modules"].update(synthesis=synthesis, mapping=mapping)
    return gen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="reduced widths, 256 and 512 px (labelled quick)")
    parser.add_argument("--batches", default="1,4")
    parser.add_argument("--resolutions", default="", help="e.g. 512,1024 (default 256,512,1024; quick 256,512)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--no-loading", action="store_true", help="skip the loading comparison")
    parser.add_argument("--allocator", choices=("worker", "system"), default="worker",
                        help="worker: ours reuses freed memory as the worker does, the references run with glibc's "
                             "defaults; system: glibc's defaults for all")
    parser.add_argument("--nvlabs", default="", metavar="DIR",
                        help="a checkout of NVlabs' stylegan2-ada-pytorch: time its own code as well")
    args = parser.parse_args()
    global REUSE
    device = torch.device(args.device)
    if args.allocator == "system" or device.type != "cpu" or not cpu_memory.available():
        REUSE = set()
    widths = QUICK if args.quick else OFFICIAL
    quick = "  [quick: reduced width]" if args.quick else ""
    print(f"StyleGAN2 synthesis, channel_base {widths['channel_base']} channel_max {widths['channel_max']} "
          f"({'QUICK MODE, not the official size' if args.quick else 'official size'}); device {describe(device)}; "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"THP_MEM_ALLOC_ENABLE={os.environ.get('THP_MEM_ALLOC_ENABLE', 'unset')}; memory: "
          + ("ours reuses freed blocks as the worker does, the references use glibc's defaults" if REUSE
             else "glibc's defaults for all"))
    if device.type == "cpu":  # what the worker would render in here with precision "auto" and amp on
        auto = render_dtype(device, "auto")
        print(f"precision auto on this CPU: bfloat16 measured {cpu_bfloat16_speedup(torch.get_num_threads()):.2f}x "
              f"float32, so the worker synthesises in {'bfloat16 autocast (the bf16 columns)' if auto == torch.bfloat16 else 'float32 (the ours columns)'}")
    bench_synthesis(args, device, widths, quick)
    if not args.no_loading:
        bench_loading(args, widths, quick)
    print(f"process peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB; seconds are "
          f"medians of {args.rounds} interleaved rounds; speed-up = reference / ours")


if __name__ == "__main__":
    main()
