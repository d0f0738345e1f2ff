"""Plain-PyTorch building blocks shared by the StyleGAN synthesis networks.

Everything here is ordinary tensor code (no compiled extensions): FIR resampling
(``upfirdn2d``), bias + activation + clamp, the modulated convolutions of
StyleGAN2 and StyleGAN3, the filtered leaky ReLU of StyleGAN3, and the Kaiser /
jinc low-pass filter design used to build fresh StyleGAN3 networks.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from renderer.stylegan.common import init_randn

SQRT2 = math.sqrt(2.0)


def parse_padding(padding: int | Sequence[int]) -> tuple[int, int, int, int]:
    """``padding`` as (x0, x1, y0, y1)."""
    if isinstance(padding, int):
        return padding, padding, padding, padding
    p = [int(v) for v in padding]
    if len(p) == 2:
        return p[0], p[0], p[1], p[1]
    if len(p) == 4:
        return p[0], p[1], p[2], p[3]
    raise ValueError(f"padding must be an int, 2 or 4 ints, got {padding!r}")


def upfirdn2d(x: torch.Tensor, f: torch.Tensor | None, up: int = 1, down: int = 1,
              padding: int | Sequence[int] = 0, gain: float = 1.0, flip_filter: bool = False) -> torch.Tensor:
    """Upsample by zero insertion, pad (or crop), convolve with FIR ``f``, keep every ``down``-th pixel.

    ``f`` is None (identity), 1-D (applied separably along x then y) or 2-D.
    The filter is scaled by ``gain`` overall (``gain ** 0.5`` per pass when separable).
    """
    n, c, h, w = x.shape
    px0, px1, py0, py1 = parse_padding(padding)
    if up > 1 and f is not None and f.ndim == 1:
        return _upsample_separable(x, f, up, down, (px0, px1, py0, py1), gain, flip_filter)
    if up > 1:
        x = x.reshape(n, c, h, 1, w, 1)
        x = F.pad(x, [0, up - 1, 0, 0, 0, up - 1])
        x = x.reshape(n, c, h * up, w * up)
    if f is not None and f.ndim == 2 and px0 == px1 == py0 == py1 and px0 >= 0:
        # Equal, non-negative padding: let the convolution pad (no padded copy of the activations).
        f = f.to(x.dtype) * gain
        if not flip_filter:
            f = f.flip([0, 1])
        return F.conv2d(x, f[None, None].expand(c, 1, *f.shape), stride=down, padding=px0, groups=c)
    x = F.pad(x, [max(px0, 0), max(px1, 0), max(py0, 0), max(py1, 0)])
    x = x[:, :, max(-py0, 0): x.shape[2] - max(-py1, 0), max(-px0, 0): x.shape[3] - max(-px1, 0)]
    if f is None:
        return x[:, :, ::down, ::down] if down > 1 else (x * gain if gain != 1 else x)
    f = f.to(x.dtype) * (gain ** (f.ndim / 2))
    if not flip_filter:
        f = f.flip(list(range(f.ndim)))
    if f.ndim == 2:
        weight = f[None, None].expand(c, 1, *f.shape)
        return F.conv2d(x, weight, stride=down, groups=c)
    wx = f.reshape(1, 1, 1, -1).expand(c, 1, 1, f.numel())
    wy = f.reshape(1, 1, -1, 1).expand(c, 1, f.numel(), 1)
    x = F.conv2d(x, wx, stride=(1, down), groups=c)
    return F.conv2d(x, wy, stride=(down, 1), groups=c)


def _fir_transposed(x: torch.Tensor, f: torch.Tensor, up: int, dim: int, p0: int, p1: int) -> torch.Tensor:
    """One axis of zero-insert + pad + FIR, as a polyphase transposed convolution (no multiplications by zero)."""
    c, taps = x.shape[1], f.numel()
    size = x.shape[dim]
    if dim == 3:
        weight, stride = f.reshape(1, 1, 1, taps).expand(c, 1, 1, taps), (1, up)
    else:
        weight, stride = f.reshape(1, 1, taps, 1).expand(c, 1, taps, 1), (up, 1)
    full = F.conv_transpose2d(x, weight, stride=stride, groups=c)  # true convolution, length (size-1)*up + taps
    start, end = taps - 1 - p0, size * up + p1  # the window upfirdn2d keeps, in full-convolution coordinates
    lo, hi = max(-start, 0), max(end - full.shape[dim], 0)
    if lo or hi:
        full = F.pad(full, [lo, hi, 0, 0] if dim == 3 else [0, 0, lo, hi])
    return full.narrow(dim, start + lo, end - start)


def _upsample_separable(x: torch.Tensor, f: torch.Tensor, up: int, down: int, padding: tuple[int, int, int, int],
                        gain: float, flip_filter: bool) -> torch.Tensor:
    f = f.to(x.dtype) * (gain ** 0.5)
    if flip_filter:
        f = f.flip(0)
    x = _fir_transposed(x, f, up, 3, padding[0], padding[1])
    x = _fir_transposed(x, f, up, 2, padding[2], padding[3])
    return x[:, :, ::down, ::down] if down > 1 else x


def upsample2d(x: torch.Tensor, f: torch.Tensor, up: int = 2) -> torch.Tensor:
    """FIR upsampling that keeps the image centred (``upfirdn2d.upsample2d`` semantics)."""
    fw = f.shape[-1]
    p = [(fw + up - 1) // 2, (fw - up) // 2] * 2
    return upfirdn2d(x, f, up=up, padding=[p[0], p[1], p[0], p[1]], gain=up * up)


def bias_act(x: torch.Tensor, b: torch.Tensor | None = None, slope: float | None = None,
             gain: float = 1.0, clamp: float | None = None) -> torch.Tensor:
    """``x + b`` then leaky ReLU (``slope``; None = linear), times ``gain``, clamped to ``±clamp``."""
    if b is not None:
        x = x + b.to(x.dtype).reshape(1, -1, *([1] * (x.ndim - 2)))
    if slope is not None and slope != 1:
        x = F.leaky_relu(x, slope)
    if gain != 1:
        x = x * gain
    if clamp is not None and clamp >= 0:
        x = x.clamp(-clamp, clamp)
    return x


def setup_filter(taps: Sequence[float]) -> torch.Tensor:
    """A normalised 2-D FIR filter from 1-D taps (outer product), as StyleGAN2 stores ``resample_filter``."""
    f = torch.as_tensor(list(taps), dtype=torch.float32)
    f = torch.outer(f, f)
    return f / f.sum()


def conv2d_resample(x: torch.Tensor, w: torch.Tensor, f: torch.Tensor | None, up: int = 1,
                    padding: int = 0, groups: int = 1) -> torch.Tensor:
    """Convolution, optionally followed by 2x FIR upsampling, exactly as StyleGAN2 orders it.

    For ``up > 1`` the kernel is applied as a stride-``up`` transposed convolution and
    the result is smoothed with ``f``; otherwise it is a plain correlation.
    """
    if up == 1:
        return F.conv2d(x, w, padding=padding, groups=groups)
    out_ch, in_per_group, kh, kw = w.shape
    fw = f.shape[-1] if f is not None else 1
    px0 = padding + (fw + up - 1) // 2 - (kw - 1)
    px1 = padding + (fw - up) // 2 - (kw - up)
    py0 = padding + (fw + up - 1) // 2 - (kh - 1)
    py1 = padding + (fw - up) // 2 - (kh - up)
    if groups == 1:
        wt = w.transpose(0, 1)
    else:
        wt = w.reshape(groups, out_ch // groups, in_per_group, kh, kw).transpose(1, 2)
        wt = wt.reshape(groups * in_per_group, out_ch // groups, kh, kw)
    pxt = max(min(-px0, -px1), 0)
    pyt = max(min(-py0, -py1), 0)
    x = F.conv_transpose2d(x, wt, stride=up, padding=[pyt, pxt], groups=groups)
    return upfirdn2d(x, f, padding=[px0 + pxt, px1 + pxt, py0 + pyt, py1 + pyt], gain=up * up)


def modulated_conv2d_sg2(x: torch.Tensor, weight: torch.Tensor, styles: torch.Tensor, demodulate: bool = True,
                         up: int = 1, padding: int = 0, resample_filter: torch.Tensor | None = None,
                         fused: bool | None = None) -> torch.Tensor:
    """StyleGAN2 modulated convolution (per-sample weights scaled by ``styles``, optional demodulation).

    ``fused=True`` runs one grouped convolution with per-sample kernels; ``False`` scales
    the activations before and after a shared convolution (same result, faster for batches).
    """
    n = x.shape[0]
    out_ch, in_ch, kh, kw = weight.shape
    if x.dtype == torch.float16 and demodulate:
        weight = weight * (1 / math.sqrt(in_ch * kh * kw) / weight.norm(float("inf"), dim=[1, 2, 3], keepdim=True))
        styles = styles / styles.norm(float("inf"), dim=1, keepdim=True)
    if fused is None:
        fused = n == 1
    dcoefs = None
    if demodulate:
        w = weight.unsqueeze(0) * styles.reshape(n, 1, -1, 1, 1)
        dcoefs = (w.square().sum(dim=[2, 3, 4]) + 1e-8).rsqrt()
    if not fused:
        x = x * styles.to(x.dtype).reshape(n, -1, 1, 1)
        x = conv2d_resample(x, weight.to(x.dtype), resample_filter, up=up, padding=padding)
        if dcoefs is not None:
            x = x * dcoefs.to(x.dtype).reshape(n, -1, 1, 1)
        return x
    w = weight.unsqueeze(0) * styles.reshape(n, 1, -1, 1, 1)
    if dcoefs is not None:
        w = w * dcoefs.reshape(n, -1, 1, 1, 1)
    x = x.reshape(1, -1, *x.shape[2:])
    w = w.reshape(-1, in_ch, kh, kw)
    x = conv2d_resample(x, w.to(x.dtype), resample_filter, up=up, padding=padding, groups=n)
    return x.reshape(n, -1, *x.shape[2:])


def frozen(owner: object, key: str, tensor: torch.Tensor, fn: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """``fn(tensor)``, kept on ``owner`` while ``tensor`` is unchanged and no gradient is wanted.

    Inference reuses the same weights for every image, so what depends on the weights alone (scaled
    dense weights, the squared kernel sums of demodulation) is computed once instead of per image.
    A weight written in place, moved or cast is seen by its version counter, address, dtype and device.
    """
    if (tensor.requires_grad and torch.is_grad_enabled()) or torch.compiler.is_compiling():
        return fn(tensor)  # (under torch.compile: computed in the graph, not guarded on the cache's state)
    stamp = (tensor._version, tensor.data_ptr(), tensor.dtype, tensor.device)
    cache = owner.__dict__.setdefault("_frozen_cache", {})
    hit = cache.get(key)
    if hit is None or hit[0] != stamp:
        hit = cache[key] = (stamp, fn(tensor).detach())
    return hit[1]


def demodulation_coefficients(weight: torch.Tensor, styles: torch.Tensor,
                              wsq: torch.Tensor | None = None) -> torch.Tensor:
    """``rsqrt(sum_(i,k) (weight[o, i, k] * styles[n, i]) ** 2 + 1e-8)`` of shape (N, out), without forming the
    per-sample kernels: ``styles ** 2 @ sum_k weight ** 2`` (a small matrix product).  ``wsq`` is
    ``weight.square().sum(dim=[2, 3])`` when the caller keeps it."""
    if wsq is None:
        wsq = weight.square().sum(dim=[2, 3])  # (out, in)
    return (styles.square() @ wsq.t() + 1e-8).rsqrt()


def modulated_conv2d_act_sg2(x: torch.Tensor, weight: torch.Tensor, styles: torch.Tensor, bias: torch.Tensor,
                             noise: torch.Tensor | None, up: int, padding: int,
                             resample_filter: torch.Tensor | None, slope: float, gain: float,
                             clamp: float | None, fused: bool, wsq: torch.Tensor | None = None) -> torch.Tensor:
    """One StyleGAN2 synthesis layer: modulated, demodulated conv, then noise, bias, leaky ReLU, gain, clamp.

    The same arithmetic as NVlabs' ``modulated_conv2d`` + ``bias_act``, arranged for speed:

    - the gain rides on the demodulation coefficients (``lrelu(g * z) == g * lrelu(z)`` for ``g > 0``), and the
      noise and bias are pre-scaled by it, so everything after the convolution is three in-place passes
      (add, leaky ReLU, clamp) instead of five new tensors;
    - ``fused`` (one sample): the styles, demodulation and gain are folded into the kernel and, without
      upsampling, the bias into the convolution; otherwise (a batch) the activations are scaled before one
      convolution shared by the whole batch and the coefficients applied after it;
    - the memory layout of ``x`` is kept (channels-last activations make oneDNN's convolutions and the
      depthwise FIR several times faster on the CPU).

    ``noise`` is already multiplied by its strength: (H, W) or (N, 1, H, W).
    """
    n = x.shape[0]
    out_ch, in_ch, kh, kw = weight.shape
    if x.dtype == torch.float16:
        weight = weight * (1 / math.sqrt(in_ch * kh * kw) / weight.norm(float("inf"), dim=[1, 2, 3], keepdim=True))
        styles = styles / styles.norm(float("inf"), dim=1, keepdim=True)
        wsq = None
    coefs = demodulation_coefficients(weight, styles, wsq) * gain  # (n, out)
    b = bias * gain
    # Folding into the kernel touches every kernel weight; scaling the activations touches the input and the
    # output once each.  Take the cheaper (the kernel at high resolution, the activations at low).
    pixels = x.shape[2] * x.shape[3]
    if fused and n == 1 and weight.numel() <= (in_ch + out_ch * up * up) * pixels:
        w = weight * (styles.reshape(1, -1, 1, 1) * coefs.reshape(-1, 1, 1, 1))
        if up == 1:
            x = F.conv2d(x, w.to(x.dtype), b.to(x.dtype), padding=padding)
        else:
            x = conv2d_resample(x, w.to(x.dtype), resample_filter, up=up, padding=padding)
            bias4 = b.to(x.dtype).reshape(1, -1, 1, 1)
            # in place without autograd: a new tensor of this size costs more in fresh pages than the add itself
            x = x + bias4 if torch.is_grad_enabled() and x.requires_grad else x.add_(bias4)
    else:
        x = x * styles.to(x.dtype).reshape(n, -1, 1, 1)
        x = conv2d_resample(x, weight.to(x.dtype), resample_filter, up=up, padding=padding)
        x = torch.addcmul(b.to(x.dtype).reshape(1, -1, 1, 1), x, coefs.to(x.dtype).reshape(n, -1, 1, 1))
    if torch.is_grad_enabled() and x.requires_grad:  # autograd: the same steps, out of place
        if noise is not None:
            x = x + (noise * gain).to(x.dtype)
        return bias_act(x, None, slope=slope, clamp=clamp)
    if noise is not None:
        x = x.add_((noise * gain).to(x.dtype))
    if slope != 1:
        x = F.leaky_relu_(x, slope)
    if clamp is not None and clamp >= 0:
        x = x.clamp_(-clamp, clamp)
    return x


def modulated_conv2d_sg3(x: torch.Tensor, w: torch.Tensor, s: torch.Tensor, demodulate: bool = True,
                         padding: int = 0, input_gain: torch.Tensor | None = None) -> torch.Tensor:
    """StyleGAN3 modulated convolution (pre-normalised weight and styles, then grouped conv)."""
    n = x.shape[0]
    out_ch, in_ch, kh, kw = w.shape
    if demodulate:
        w = w * w.square().mean([1, 2, 3], keepdim=True).rsqrt()
        s = s * s.square().mean().rsqrt()
    w = w.unsqueeze(0) * s.unsqueeze(1).unsqueeze(3).unsqueeze(4)
    if demodulate:
        dcoefs = (w.square().sum(dim=[2, 3, 4]) + 1e-8).rsqrt()
        w = w * dcoefs.unsqueeze(2).unsqueeze(3).unsqueeze(4)
    if input_gain is not None:
        w = w * input_gain.expand(n, in_ch).unsqueeze(1).unsqueeze(3).unsqueeze(4)
    x = x.reshape(1, -1, *x.shape[2:])
    w = w.reshape(-1, in_ch, kh, kw)
    x = F.conv2d(x, w.to(x.dtype), padding=padding, groups=n)
    return x.reshape(n, -1, *x.shape[2:])


def filtered_lrelu(x: torch.Tensor, fu: torch.Tensor | None, fd: torch.Tensor | None, b: torch.Tensor | None,
                   up: int, down: int, padding: Sequence[int], gain: float, slope: float,
                   clamp: float | None) -> torch.Tensor:
    """Bias, upsample with ``fu``, leaky ReLU + gain + clamp, downsample with ``fd`` (StyleGAN3)."""
    if b is not None:
        x = bias_act(x, b)
    x = upfirdn2d(x, fu, up=up, padding=padding, gain=up * up)
    x = bias_act(x, None, slope=slope, gain=gain, clamp=clamp)
    return upfirdn2d(x, fd, down=down)


# --------------------------------------------------------------------------- filter design


def _kaiser_beta(atten: float) -> float:
    if atten > 50:
        return 0.1102 * (atten - 8.7)
    if atten > 21:
        return 0.5842 * (atten - 21) ** 0.4 + 0.07886 * (atten - 21)
    return 0.0


def _kaiser_atten(numtaps: int, width: float) -> float:
    return 2.285 * (numtaps - 1) * math.pi * width + 7.95


def firwin_lowpass(numtaps: int, cutoff: float, width: float, fs: float) -> np.ndarray:
    """Kaiser-windowed sinc low-pass with unit DC gain (the design ``scipy.signal.firwin`` makes)."""
    nyq = fs / 2
    beta = _kaiser_beta(_kaiser_atten(numtaps, width / nyq))
    c = cutoff / nyq
    m = np.arange(numtaps) - (numtaps - 1) / 2
    h = c * np.sinc(c * m) * np.kaiser(numtaps, beta)
    return h / h.sum()


def design_lowpass_filter(numtaps: int, cutoff: float, width: float, fs: float,
                          radial: bool = False) -> torch.Tensor | None:
    """StyleGAN3's layer filters: None (identity), separable Kaiser, or radial jinc."""
    if numtaps == 1:
        return None
    if not radial:
        return torch.as_tensor(firwin_lowpass(numtaps, cutoff, width, fs), dtype=torch.float32)
    x = (np.arange(numtaps) - (numtaps - 1) / 2) / fs
    r = np.hypot(*np.meshgrid(x, x))
    arg = torch.as_tensor(2 * cutoff * (np.pi * r), dtype=torch.float64)
    f = (torch.special.bessel_j1(arg).numpy()) / (np.pi * r)
    beta = _kaiser_beta(_kaiser_atten(numtaps, width / (fs / 2)))
    w = np.kaiser(numtaps, beta)
    f *= np.outer(w, w)
    f /= np.sum(f)
    return torch.as_tensor(f, dtype=torch.float32)


class FullyConnected(torch.nn.Module):
    """Equalised-learning-rate dense layer (``weight_gain = lr / sqrt(in)``), as in StyleGAN2/3."""

    def __init__(self, in_features: int, out_features: int, bias_init: float = 0.0, lr_multiplier: float = 1.0,
                 weight_init: float = 1.0) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(init_randn(out_features, in_features, scale=weight_init / lr_multiplier))
        self.bias = torch.nn.Parameter(torch.full([out_features], float(bias_init)) / lr_multiplier)
        self.weight_gain = lr_multiplier / math.sqrt(in_features)
        self.bias_gain = lr_multiplier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = frozen(self, "weight", self.weight, lambda t: (t * self.weight_gain).t()).to(x.dtype)
        b = frozen(self, "bias", self.bias, lambda t: t * self.bias_gain).to(x.dtype)
        return torch.addmm(b.unsqueeze(0), x, w)
