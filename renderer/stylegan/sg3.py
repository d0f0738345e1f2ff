"""StyleGAN3 (alias-free, T and R configs) synthesis network, in plain PyTorch.

Parameter and buffer names follow NVlabs stylegan3 (``input.affine.weight``,
``input.freqs``, ``L0_36_1024.affine.weight``, ``L3_52_1024.up_filter`` ...).  The
filtered leaky ReLU is the reference formulation (upsample, activate, downsample)
written with ordinary convolutions.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from renderer.stylegan.common import Synthesis, init_rand, init_randn
from renderer.stylegan.ops import FullyConnected, design_lowpass_filter, filtered_lrelu, modulated_conv2d_sg3


class SynthesisInput(torch.nn.Module):
    """Fourier features with a learned rotation/translation taken from ``ws[:, 0]``."""

    def __init__(self, w_dim: int, channels: int, size: int, sampling_rate: float, bandwidth: float) -> None:
        super().__init__()
        self.channels = channels
        self.size = int(size)
        self.sampling_rate = float(sampling_rate)
        self.bandwidth = float(bandwidth)
        freqs = init_randn(channels, 2)
        radii = freqs.square().sum(dim=1, keepdim=True).sqrt()
        freqs /= radii * radii.square().exp().pow(0.25)
        freqs *= bandwidth
        phases = init_rand(channels) - 0.5
        self.weight = torch.nn.Parameter(init_randn(channels, channels))
        self.affine = FullyConnected(w_dim, 4, weight_init=0)
        with torch.no_grad():
            self.affine.bias.copy_(torch.tensor([1.0, 0.0, 0.0, 0.0]))
        self.register_buffer("transform", torch.eye(3, 3))
        self.register_buffer("freqs", freqs)
        self.register_buffer("phases", phases)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        n = w.shape[0]
        t = self.affine(w)
        t = t / t[:, :2].norm(dim=1, keepdim=True)
        eye = torch.eye(3, device=w.device, dtype=w.dtype).unsqueeze(0).repeat(n, 1, 1)
        m_r = eye.clone()
        m_r[:, 0, 0] = t[:, 0]
        m_r[:, 0, 1] = -t[:, 1]
        m_r[:, 1, 0] = t[:, 1]
        m_r[:, 1, 1] = t[:, 0]
        m_t = eye.clone()
        m_t[:, 0, 2] = -t[:, 2]
        m_t[:, 1, 2] = -t[:, 3]
        transforms = m_r @ m_t @ self.transform.unsqueeze(0).to(w.dtype)
        freqs = self.freqs.unsqueeze(0).to(w.dtype)
        phases = self.phases.unsqueeze(0).to(w.dtype) + (freqs @ transforms[:, :2, 2:]).squeeze(2)
        freqs = freqs @ transforms[:, :2, :2]
        amplitudes = (1 - (freqs.norm(dim=2) - self.bandwidth)
                      / (self.sampling_rate / 2 - self.bandwidth)).clamp(0, 1)
        theta = torch.eye(2, 3, device=w.device, dtype=w.dtype)
        theta[0, 0] = 0.5 * self.size / self.sampling_rate
        theta[1, 1] = 0.5 * self.size / self.sampling_rate
        grids = F.affine_grid(theta.unsqueeze(0), [1, 1, self.size, self.size], align_corners=False)
        x = (grids.unsqueeze(3) @ freqs.permute(0, 2, 1).unsqueeze(1).unsqueeze(2)).squeeze(3)
        x = x + phases.unsqueeze(1).unsqueeze(2)
        x = torch.sin(x * (2 * math.pi)) * amplitudes.unsqueeze(1).unsqueeze(2)
        x = x @ (self.weight / math.sqrt(self.channels)).t().to(w.dtype)
        return x.permute(0, 3, 1, 2)


class SynthesisLayer(torch.nn.Module):
    """Modulated conv + filtered leaky ReLU between two sampling rates (or the final ToRGB)."""

    def __init__(self, w_dim: int, is_torgb: bool, is_critically_sampled: bool, use_fp16: bool,
                 in_channels: int, out_channels: int, in_size: int, out_size: int,
                 in_sampling_rate: float, out_sampling_rate: float, in_cutoff: float, out_cutoff: float,
                 in_half_width: float, out_half_width: float, conv_kernel: int = 3, filter_size: int = 6,
                 lrelu_upsampling: int = 2, use_radial_filters: bool = False, conv_clamp: float | None = 256) -> None:
        super().__init__()
        self.is_torgb = is_torgb
        self.use_fp16 = use_fp16
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.in_size = int(in_size)
        self.out_size = int(out_size)
        self.conv_kernel = 1 if is_torgb else conv_kernel
        self.conv_clamp = conv_clamp
        tmp_rate = max(in_sampling_rate, out_sampling_rate) * (1 if is_torgb else lrelu_upsampling)
        self.affine = FullyConnected(w_dim, in_channels, bias_init=1)
        self.weight = torch.nn.Parameter(init_randn(out_channels, in_channels, self.conv_kernel, self.conv_kernel))
        self.bias = torch.nn.Parameter(torch.zeros(out_channels))
        self.register_buffer("magnitude_ema", torch.ones([]))
        self.up_factor = int(np.rint(tmp_rate / in_sampling_rate))
        self.up_taps = filter_size * self.up_factor if self.up_factor > 1 and not is_torgb else 1
        self.register_buffer("up_filter", design_lowpass_filter(self.up_taps, in_cutoff, in_half_width * 2, tmp_rate))
        self.down_factor = int(np.rint(tmp_rate / out_sampling_rate))
        self.down_taps = filter_size * self.down_factor if self.down_factor > 1 and not is_torgb else 1
        radial = use_radial_filters and not is_critically_sampled
        self.register_buffer("down_filter", design_lowpass_filter(self.down_taps, out_cutoff, out_half_width * 2,
                                                                  tmp_rate, radial=radial))
        pad_total = (self.out_size - 1) * self.down_factor + 1
        pad_total -= (self.in_size + self.conv_kernel - 1) * self.up_factor
        pad_total += self.up_taps + self.down_taps - 2
        pad_lo = (pad_total + self.up_factor) // 2
        pad_hi = pad_total - pad_lo
        self.padding = [int(pad_lo), int(pad_hi), int(pad_lo), int(pad_hi)]

    def forward(self, x: torch.Tensor, w: torch.Tensor, fp16: bool) -> torch.Tensor:
        styles = self.affine(w)
        if self.is_torgb:
            styles = styles * (1 / math.sqrt(self.in_channels * self.conv_kernel ** 2))
        dtype = torch.float16 if (self.use_fp16 and fp16) else torch.float32
        x = modulated_conv2d_sg3(x.to(dtype), self.weight, styles, demodulate=not self.is_torgb,
                                 padding=self.conv_kernel - 1, input_gain=self.magnitude_ema.rsqrt())
        gain = 1.0 if self.is_torgb else math.sqrt(2)
        slope = 1.0 if self.is_torgb else 0.2
        return filtered_lrelu(x, self.up_filter, self.down_filter, self.bias, self.up_factor, self.down_factor,
                              self.padding, gain, slope, self.conv_clamp)


def sg3_schedule(img_resolution: int, img_channels: int, channel_base: int = 32768, channel_max: int = 512,
                 num_layers: int = 14, num_critical: int = 2, first_cutoff: float = 2, first_stopband: float = 2 ** 2.1,
                 last_stopband_rel: float = 2 ** 0.3, margin_size: int = 10) -> dict[str, np.ndarray]:
    """Per-layer cutoffs, stopbands, sampling rates, half widths, sizes and channels (StyleGAN3's recipe)."""
    last_cutoff = img_resolution / 2
    last_stopband = last_cutoff * last_stopband_rel
    exponents = np.minimum(np.arange(num_layers + 1) / (num_layers - num_critical), 1)
    cutoffs = first_cutoff * (last_cutoff / first_cutoff) ** exponents
    stopbands = first_stopband * (last_stopband / first_stopband) ** exponents
    rates = np.exp2(np.ceil(np.log2(np.minimum(stopbands * 2, img_resolution))))
    half_widths = np.maximum(stopbands, rates / 2) - cutoffs
    sizes = rates + margin_size * 2
    sizes[-2:] = img_resolution
    channels = np.rint(np.minimum((channel_base / 2) / cutoffs, channel_max))
    channels[-1] = img_channels
    return dict(cutoffs=cutoffs, rates=rates, half_widths=half_widths, sizes=sizes, channels=channels)


class SG3Synthesis(Synthesis):
    """StyleGAN3 synthesis: Fourier input, ``num_layers`` alias-free layers and a ToRGB; ``num_ws = num_layers + 2``."""

    family = "stylegan3"

    def __init__(self, w_dim: int, img_resolution: int, img_channels: int, channel_base: int = 32768,
                 channel_max: int = 512, num_layers: int = 14, num_critical: int = 2, first_cutoff: float = 2,
                 first_stopband: float = 2 ** 2.1, last_stopband_rel: float = 2 ** 0.3, margin_size: int = 10,
                 output_scale: float = 0.25, num_fp16_res: int = 4, conv_kernel: int = 3, filter_size: int = 6,
                 lrelu_upsampling: int = 2, use_radial_filters: bool = False, conv_clamp: float | None = 256) -> None:
        super().__init__()
        self._config = dict(w_dim=w_dim, img_resolution=img_resolution, img_channels=img_channels,
                            channel_base=channel_base, channel_max=channel_max, num_layers=num_layers,
                            num_critical=num_critical, first_cutoff=first_cutoff, first_stopband=first_stopband,
                            last_stopband_rel=last_stopband_rel, margin_size=margin_size, output_scale=output_scale,
                            num_fp16_res=num_fp16_res, conv_kernel=conv_kernel, filter_size=filter_size,
                            lrelu_upsampling=lrelu_upsampling, use_radial_filters=use_radial_filters,
                            conv_clamp=conv_clamp)
        self.w_dim = int(w_dim)
        self.img_resolution = int(img_resolution)
        self.img_channels = int(img_channels)
        self.num_ws = num_layers + 2
        self.output_scale = output_scale
        self.num_fp16_res = num_fp16_res
        s = sg3_schedule(img_resolution, img_channels, channel_base, channel_max, num_layers, num_critical,
                         first_cutoff, first_stopband, last_stopband_rel, margin_size)
        ch, sizes, rates, cut, hw = s["channels"], s["sizes"], s["rates"], s["cutoffs"], s["half_widths"]
        self.input = SynthesisInput(self.w_dim, int(ch[0]), int(sizes[0]), rates[0], cut[0])
        self.layer_names: list[str] = []
        for idx in range(num_layers + 1):
            prev = max(idx - 1, 0)
            layer = SynthesisLayer(
                w_dim=self.w_dim, is_torgb=idx == num_layers, is_critically_sampled=idx >= num_layers - num_critical,
                use_fp16=bool(rates[idx] * (2 ** num_fp16_res) > img_resolution),
                in_channels=int(ch[prev]), out_channels=int(ch[idx]), in_size=int(sizes[prev]),
                out_size=int(sizes[idx]), in_sampling_rate=int(rates[prev]), out_sampling_rate=int(rates[idx]),
                in_cutoff=cut[prev], out_cutoff=cut[idx], in_half_width=hw[prev], out_half_width=hw[idx],
                conv_kernel=conv_kernel, filter_size=filter_size, lrelu_upsampling=lrelu_upsampling,
                use_radial_filters=use_radial_filters, conv_clamp=conv_clamp)
            name = f"L{idx}_{layer.out_size}_{layer.out_channels}"
            setattr(self, name, layer)
            self.layer_names.append(name)
        self.register_buffer("w_avg", torch.zeros(self.w_dim))

    @property
    def has_fp16(self) -> bool:
        return self.num_fp16_res > 0

    def config(self) -> dict[str, Any]:
        return dict(self._config)

    def synthesize(self, ws: torch.Tensor, noise_mode: str = "const",
                   generator: torch.Generator | None = None) -> torch.Tensor:
        # StyleGAN3 has no noise inputs; noise_mode is accepted for a uniform interface.
        ws = ws.to(torch.float32).unbind(dim=1)
        fp16 = self.fp16_enabled and ws[0].device.type == "cuda"
        x = self.input(ws[0])
        for name, w in zip(self.layer_names, ws[1:]):
            x = getattr(self, name)(x, w, fp16)
        if self.output_scale != 1:
            x = x * self.output_scale
        return x.to(torch.float32)
