"""Estimate memory and time before a run, so a too-big canvas fails with advice instead of a CUDA OOM.

The estimate is analytic: parameters, the decoder's saved activations per level
(fewer with gradient checkpointing), CLIP's saved activations per cutout, and a
safety margin.  :func:`check_fits` raises :class:`CanvasTooLarge` naming the
largest size with the same aspect ratio that fits.  On the CPU,
:func:`estimate_seconds` turns a FLOP count into seconds per step using a short
matmul calibration.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from renderer.base import GeneratorUnavailable

log = logging.getLogger(__name__)

GIB = 1024 ** 3
MARGIN = 1.25
WORKSPACE = 256 * 1024 ** 2


class CanvasTooLarge(GeneratorUnavailable):
    """The requested size would not fit in the device's memory; the message gives the largest that does."""


@dataclass(frozen=True)
class ClipShape:
    params: int
    width: int
    layers: int
    heads: int
    tokens: int
    image_size: int

    @classmethod
    def of(cls, model: torch.nn.Module) -> "ClipShape":
        v = model.visual
        size = v.image_size[0] if isinstance(v.image_size, (tuple, list)) else v.image_size
        patch = v.patch_size[0] if isinstance(v.patch_size, (tuple, list)) else v.patch_size
        tr = v.transformer
        heads = tr.resblocks[0].attn.num_heads if hasattr(tr.resblocks[0], "attn") else max(1, tr.width // 64)
        return cls(params=sum(p.numel() for p in v.parameters()), width=tr.width, layers=tr.layers,
                   heads=heads, tokens=(size // patch) ** 2 + 1, image_size=int(size))


@dataclass(frozen=True)
class DecoderShape:
    ch: int
    ch_mult: tuple[int, ...]
    num_res_blocks: int
    z_channels: int
    attn_at_latent: bool
    level_params: tuple[int, ...]  # parameters of decoder.up[i] (level 0 = full resolution)
    latent_params: int  # conv_in + mid (run at latent resolution)
    out_params: int  # norm_out + conv_out (full resolution)
    total_params: int  # whole VQGAN

    @classmethod
    def of(cls, vqgan: torch.nn.Module) -> "DecoderShape":
        dd = vqgan.cfg.ddconfig
        dec = vqgan.decoder

        def n(m: torch.nn.Module) -> int:
            return sum(p.numel() for p in m.parameters())

        return cls(ch=dd["ch"], ch_mult=tuple(dd["ch_mult"]), num_res_blocks=dd["num_res_blocks"],
                   z_channels=dd["z_channels"], attn_at_latent=True,
                   level_params=tuple(n(u) for u in dec.up), latent_params=n(dec.conv_in) + n(dec.mid),
                   out_params=n(dec.norm_out) + n(dec.conv_out), total_params=n(vqgan))


@dataclass(frozen=True)
class Estimate:
    bytes: int
    params_bytes: int
    decoder_bytes: int
    clip_bytes: int

    def __str__(self) -> str:
        return (f"{self.bytes / GIB:.2f} GiB (weights {self.params_bytes / GIB:.2f}, decoder activations "
                f"{self.decoder_bytes / GIB:.2f}, CLIP activations {self.clip_bytes / GIB:.2f})")


def estimate(dec: DecoderShape, clips: Sequence[ClipShape], width: int, height: int, cutouts: int,
             act_bytes: int = 4, grad_checkpoint: bool = False) -> Estimate:
    """Peak bytes for one optimisation step at ``width`` x ``height``."""
    levels = len(dec.ch_mult)
    factor = 2 ** (levels - 1)
    pixels = width * height
    latent = pixels / factor ** 2
    per_level = []
    for i, mult in enumerate(dec.ch_mult):
        p = pixels / 4 ** i
        c = dec.ch * mult
        tensors_per_block = 1 if grad_checkpoint else 8
        per_level.append((dec.num_res_blocks + 1) * tensors_per_block * c * p + 2 * c * p)
    mid_c = dec.ch * dec.ch_mult[-1]
    attn = 2 * latent * latent + 4 * mid_c * latent  # softmax matrix + q, k, v, out at latent resolution
    full = 6 * dec.ch * dec.ch_mult[0] * pixels  # norm_out, swish, conv_out, clamp, image copies
    dec_elems = sum(per_level) + attn + full
    if grad_checkpoint:
        dec_elems += 10 * dec.ch * dec.ch_mult[0] * pixels  # one block recomputed at full resolution
    clip_elems = clip_activation_elems(clips, cutouts)
    params_bytes = 4 * (dec.total_params + sum(c.params for c in clips))
    if act_bytes < 4:
        params_bytes = int(params_bytes * 1.5)  # autocast keeps low-precision copies of the weights
    total = int((params_bytes + (dec_elems + clip_elems) * act_bytes) * MARGIN + WORKSPACE)
    return Estimate(bytes=total, params_bytes=params_bytes, decoder_bytes=int(dec_elems * act_bytes),
                    clip_bytes=int(clip_elems * act_bytes))


def largest_fitting(dec: DecoderShape, clips: Sequence[ClipShape], width: int, height: int, cutouts: int,
                    available: int, act_bytes: int = 4, grad_checkpoint: bool = False) -> tuple[int, int] | None:
    """The largest (w, h) with the aspect ratio of ``width`` x ``height`` (multiples of the latent factor) that fits."""
    factor = 2 ** (len(dec.ch_mult) - 1)
    return largest_size_that_fits(
        lambda w, h: estimate(dec, clips, w, h, cutouts, act_bytes, grad_checkpoint).bytes,
        width, height, factor, available)


def largest_size_that_fits(need: Callable[[int, int], int], width: int, height: int, factor: int,
                           available: int) -> tuple[int, int] | None:
    """The largest (w, h) with the aspect ratio of ``width`` x ``height``, in multiples of ``factor``, whose
    ``need(w, h)`` bytes fit in ``available``; None when not even the smallest does (a binary search: the
    need grows with the size)."""
    best = None
    lo, hi = 1, max(width, height) // factor
    while lo <= hi:
        mid = (lo + hi) // 2
        scale = mid * factor / max(width, height)
        w = max(factor, int(width * scale) // factor * factor)
        h = max(factor, int(height * scale) // factor * factor)
        if need(w, h) <= available:
            best, lo = (w, h), mid + 1
        else:
            hi = mid - 1
    return best


def clip_activation_elems(clips: Sequence[ClipShape], cutouts: int) -> float:
    """Activations CLIP keeps for backward over ``cutouts`` crops, in elements (all models together)."""
    elems = 0.0
    for c in clips:
        per_layer = 20 * c.tokens * c.width + 2 * c.heads * c.tokens ** 2
        elems += cutouts * (c.layers * per_layer + 3 * c.image_size ** 2 * 4)
    return elems


def check_fits(dec: DecoderShape, clips: Sequence[ClipShape], width: int, height: int, cutouts: int,
               available: int, act_bytes: int = 4, grad_checkpoint: bool = False) -> Estimate:
    est = estimate(dec, clips, width, height, cutouts, act_bytes, grad_checkpoint)
    if est.bytes <= available:
        return est
    best = largest_fitting(dec, clips, width, height, cutouts, available, act_bytes, grad_checkpoint)
    hint = (f"the largest size that fits is {best[0]}x{best[1]}" if best
            else "not even the smallest canvas fits; use fewer cutouts or CLIP models")
    raise CanvasTooLarge(
        f"{width}x{height} with {cutouts} cutouts needs about {est}, but only "
        f"{available / GIB:.2f} GiB is free on the device; {hint} (or lower 'cutouts')")


def available_bytes(device: torch.device) -> int | None:
    """Free memory on a CUDA device; None on the CPU (no limit checked there)."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    return None


def step_flops(dec: DecoderShape, clips: Sequence[ClipShape], width: int, height: int, cutouts: int) -> float:
    """Forward+backward FLOPs of one step (conv FLOPs ~ 2 * params * output pixels)."""
    factor = 2 ** (len(dec.ch_mult) - 1)
    pixels = width * height
    latent = pixels / factor ** 2
    fwd = 2 * dec.latent_params * latent + 2 * dec.out_params * pixels
    for i, n in enumerate(dec.level_params):
        fwd += 2 * n * pixels / 4 ** i
    fwd += 4 * latent * latent * dec.ch * dec.ch_mult[-1]
    for c in clips:
        fwd += cutouts * (2 * c.params * c.tokens + 4 * c.layers * c.tokens ** 2 * c.width)
    return 3.0 * fwd


def cpu_flops_per_second(n: int = 384, repeats: int = 3) -> float:
    """A short matmul calibration of this CPU (about a tenth of a second)."""
    a = torch.randn(n, n)
    b = torch.randn(n, n)
    a @ b
    t = time.perf_counter()
    for _ in range(repeats):
        a @ b
    dt = max(time.perf_counter() - t, 1e-6)
    return 2 * n ** 3 * repeats / dt


def estimate_seconds(dec: DecoderShape, clips: Sequence[ClipShape], width: int, height: int, cutouts: int,
                     efficiency: float = 0.35) -> float:
    """Seconds per step on this CPU (convolutions and attention run below matmul peak: ``efficiency``)."""
    return step_flops(dec, clips, width, height, cutouts) / (cpu_flops_per_second() * efficiency)


def log_cpu_estimate(dec: DecoderShape, clips: Sequence[ClipShape], width: int, height: int, cutouts: int,
                     steps: int) -> float:
    sec = estimate_seconds(dec, clips, width, height, cutouts)
    log.info("CPU estimate for %dx%d, %d cutouts: about %.1f s per step, %.1f min for %d steps",
             width, height, cutouts, sec, sec * steps / 60, steps)
    return sec
