"""StyleGAN (v1) synthesis network, in plain PyTorch.

Const 4x4 input, then per resolution an upsampling 3x3 conv (nearest-neighbour
upscale below 128 px, a fused transposed conv from 128 px on) followed by a
[1,2,1] blur and a 3x3 conv.  Every conv ends with the "layer epilogue": per-channel
noise, bias, leaky ReLU, instance norm and AdaIN style modulation from ``ws[:, i]``.
Weights are stored raw and scaled at run time (equalised learning rate).  The fused
upscale conv replays TF's ``conv2d_transpose`` on the 4x4 "pad and sum" kernel, which
equals nearest upscale + 3x3 conv with the kernel flipped (a test checks this).  ToRGB
layers exist for every level of detail; ``lod`` (0 when training finished) blends
them as the progressive-growing "linear" structure does.
"""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from renderer.stylegan.common import Synthesis, init_randn, randn_like_on

LRELU_SLOPE = 0.2


def sg1_channels(img_resolution: int, fmap_base: int = 8192, fmap_decay: float = 1.0,
                 fmap_max: int = 512) -> dict[int, int]:
    """Channels at each resolution: ``nf(log2(res) - 1)`` of StyleGAN's ``G_synthesis``."""
    log2 = int(math.log2(img_resolution))
    return {2 ** r: min(int(fmap_base / (2.0 ** ((r - 1) * fmap_decay))), fmap_max) for r in range(2, log2 + 1)}


class Epilogue(torch.nn.Module):
    """noise -> bias -> leaky ReLU -> instance norm -> AdaIN style (``x * (1 + ys) + yb``)."""

    def __init__(self, channels: int, w_dim: int, resolution: int, use_wscale: bool = True) -> None:
        super().__init__()
        self.resolution = resolution
        self.noise_weight = torch.nn.Parameter(torch.zeros(channels))
        self.register_buffer("noise_const", init_randn(resolution, resolution))
        self.bias = torch.nn.Parameter(torch.zeros(channels))
        self.style_weight = torch.nn.Parameter(init_randn(2 * channels, w_dim))
        self.style_bias = torch.nn.Parameter(torch.zeros(2 * channels))
        self.style_gain = 1 / math.sqrt(w_dim) if use_wscale else 1.0

    def forward(self, x: torch.Tensor, w: torch.Tensor, noise_mode: str,
                generator: torch.Generator | None) -> torch.Tensor:
        if noise_mode == "random":
            noise = randn_like_on([x.shape[0], 1, self.resolution, self.resolution], x, generator)
            x = x + noise * self.noise_weight.reshape(1, -1, 1, 1)
        elif noise_mode == "const":
            x = x + self.noise_const * self.noise_weight.reshape(1, -1, 1, 1)
        x = F.leaky_relu(x + self.bias.reshape(1, -1, 1, 1), LRELU_SLOPE)
        x = x - x.mean(dim=[2, 3], keepdim=True)
        x = x * (x.square().mean(dim=[2, 3], keepdim=True) + 1e-8).rsqrt()
        style = torch.addmm(self.style_bias.unsqueeze(0), w, (self.style_weight * self.style_gain).t())
        ys, yb = style.reshape(x.shape[0], 2, -1, 1, 1).unbind(dim=1)
        return x * (ys + 1) + yb


class SG1Synthesis(Synthesis):
    """StyleGAN synthesis (``G_synthesis``); ``num_ws = 2 * log2(resolution) - 2``."""

    family = "stylegan1"

    def __init__(self, w_dim: int, img_resolution: int, img_channels: int, channels: dict[Any, int],
                 use_wscale: bool = True, fused_scale: str | bool = "auto") -> None:
        super().__init__()
        self.w_dim = int(w_dim)
        self.img_resolution = int(img_resolution)
        self.img_channels = int(img_channels)
        self.channels = {int(k): int(v) for k, v in channels.items()}
        self.use_wscale = bool(use_wscale)
        self.fused_scale = fused_scale
        self.log2 = int(math.log2(img_resolution))
        if 2 ** self.log2 != img_resolution or img_resolution < 4:
            raise ValueError(f"img_resolution must be a power of two >= 4, got {img_resolution}")
        self.num_ws = 2 * self.log2 - 2
        gain = math.sqrt(2)
        self.const = torch.nn.Parameter(torch.ones(self.channels[4], 4, 4))
        self.epilogues = torch.nn.ModuleList()
        self.convs = torch.nn.ParameterList()
        self.conv_gains: list[float] = []
        self.fused: list[bool] = []
        c4 = self.channels[4]
        self.epilogues.append(Epilogue(c4, w_dim, 4, use_wscale))
        self._add_conv(c4, c4, gain)
        self.epilogues.append(Epilogue(c4, w_dim, 4, use_wscale))
        for r in range(3, self.log2 + 1):
            res, cin, cout = 2 ** r, self.channels[2 ** (r - 1)], self.channels[2 ** r]
            fused = (res >= 128) if fused_scale == "auto" else bool(fused_scale)
            self.fused.append(fused)
            self._add_conv(cin, cout, gain)
            self.epilogues.append(Epilogue(cout, w_dim, res, use_wscale))
            self._add_conv(cout, cout, gain)
            self.epilogues.append(Epilogue(cout, w_dim, res, use_wscale))
        self.torgb_weight = torch.nn.ParameterList()
        self.torgb_bias = torch.nn.ParameterList()
        for r in range(2, self.log2 + 1):  # index = r - 2; lod = log2 - r
            c = self.channels[2 ** r]
            self.torgb_weight.append(torch.nn.Parameter(init_randn(img_channels, c, 1, 1)))
            self.torgb_bias.append(torch.nn.Parameter(torch.zeros(img_channels)))
        self.register_buffer("blur_filter", self._blur_kernel())
        self.register_buffer("lod", torch.zeros([]))
        self.register_buffer("w_avg", torch.zeros(self.w_dim))

    def _add_conv(self, cin: int, cout: int, gain: float) -> None:
        self.convs.append(torch.nn.Parameter(init_randn(cout, cin, 3, 3)))
        self.conv_gains.append(gain / math.sqrt(cin * 9) if self.use_wscale else 1.0)

    @staticmethod
    def _blur_kernel() -> torch.Tensor:
        f = torch.tensor([1.0, 2.0, 1.0])
        f = torch.outer(f, f)
        return f / f.sum()

    def config(self) -> dict[str, Any]:
        return dict(w_dim=self.w_dim, img_resolution=self.img_resolution, img_channels=self.img_channels,
                    channels={str(k): v for k, v in self.channels.items()}, use_wscale=self.use_wscale,
                    fused_scale=self.fused_scale)

    def _conv(self, i: int, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.convs[i].to(x.dtype) * self.conv_gains[i], padding=1)

    def _up_conv(self, i: int, x: torch.Tensor, fused: bool) -> torch.Tensor:
        w = self.convs[i].to(x.dtype) * self.conv_gains[i]
        if not fused:
            return F.conv2d(F.interpolate(x, scale_factor=2, mode="nearest"), w, padding=1)
        w = F.pad(w, [1, 1, 1, 1])
        w = w[:, :, 1:, 1:] + w[:, :, :-1, 1:] + w[:, :, 1:, :-1] + w[:, :, :-1, :-1]
        return F.conv_transpose2d(x, w.transpose(0, 1), stride=2, padding=1)

    def _blur(self, x: torch.Tensor) -> torch.Tensor:
        c = x.shape[1]
        return F.conv2d(x, self.blur_filter.to(x.dtype)[None, None].expand(c, 1, 3, 3), padding=1, groups=c)

    def _torgb(self, r: int, x: torch.Tensor) -> torch.Tensor:
        w = self.torgb_weight[r - 2].to(x.dtype)
        if self.use_wscale:
            w = w / math.sqrt(w.shape[1])
        return F.conv2d(x, w) + self.torgb_bias[r - 2].to(x.dtype).reshape(1, -1, 1, 1)

    def synthesize(self, ws: torch.Tensor, noise_mode: str = "const",
                   generator: torch.Generator | None = None) -> torch.Tensor:
        ws = ws.to(torch.float32)
        lod_in = float(self.lod)
        x = self.const.unsqueeze(0).expand(ws.shape[0], -1, -1, -1)
        x = self.epilogues[0](x, ws[:, 0], noise_mode, generator)
        x = self.epilogues[1](self._conv(0, x), ws[:, 1], noise_mode, generator)
        images = self._torgb(2, x) if lod_in > 0 else None
        for r in range(3, self.log2 + 1):
            k = 2 * r - 4  # epilogue / ws index of this block's first layer; its conv is convs[k - 1]
            x = self._blur(self._up_conv(k - 1, x, self.fused[r - 3]))
            x = self.epilogues[k](x, ws[:, k], noise_mode, generator)
            x = self.epilogues[k + 1](self._conv(k, x), ws[:, k + 1], noise_mode, generator)
            t = min(max(lod_in - (self.log2 - r), 0.0), 1.0)
            if images is not None and t > 0:
                img = self._torgb(r, x)
                images = F.interpolate(images, scale_factor=2, mode="nearest")
                images = img + (images - img) * t
            else:
                images = self._torgb(r, x) if (r == self.log2 or lod_in > 0) else None
        if images is None:
            images = self._torgb(self.log2, x)
        return images
