"""StyleGAN2 / StyleGAN2-ADA synthesis network ('skip' architecture), in plain PyTorch.

Parameter names follow NVlabs stylegan2-ada-pytorch (``b4.const``, ``b8.conv0.affine.weight``,
``b8.torgb.bias``, ``b4.conv1.noise_const`` ...) so those checkpoints load by name;
TF StyleGAN2 and rosinality checkpoints are renamed into this layout by the loaders.
"""
from __future__ import annotations

import math
from typing import Any, Mapping

import torch

from renderer.stylegan.common import Synthesis, init_randn, randn_like_on
from renderer.stylegan.ops import (SQRT2, FullyConnected, bias_act, frozen, modulated_conv2d_act_sg2,
                                   modulated_conv2d_sg2, setup_filter, upsample2d)


def sg2_channels(img_resolution: int, channel_base: int = 32768, channel_max: int = 512) -> dict[int, int]:
    """Channels per block resolution, as StyleGAN2-ADA computes them."""
    log2 = int(math.log2(img_resolution))
    return {2 ** i: min(channel_base // 2 ** i, channel_max) for i in range(2, log2 + 1)}


class SynthesisLayer(torch.nn.Module):
    def __init__(self, in_channels: int, out_channels: int, w_dim: int, resolution: int, up: int = 1,
                 conv_clamp: float | None = None, use_noise: bool = True) -> None:
        super().__init__()
        self.resolution = resolution
        self.up = up
        self.conv_clamp = conv_clamp
        self.use_noise = use_noise
        self.affine = FullyConnected(w_dim, in_channels, bias_init=1)
        self.weight = torch.nn.Parameter(init_randn(out_channels, in_channels, 3, 3))
        if use_noise:
            self.register_buffer("noise_const", init_randn(resolution, resolution))
            self.noise_strength = torch.nn.Parameter(torch.zeros([]))
        self.bias = torch.nn.Parameter(torch.zeros(out_channels))
        self.register_buffer("resample_filter", setup_filter([1, 3, 3, 1]))

    def forward(self, x: torch.Tensor, w: torch.Tensor, noise_mode: str, generator: torch.Generator | None,
                fused: bool | None, drawn: torch.Tensor | None = None) -> torch.Tensor:
        """``drawn``: this layer's unit noise (N, 1, res, res), already drawn (noise_mode "random" only)."""
        styles = self.affine(w)
        noise = None
        if self.use_noise and noise_mode == "random":
            if drawn is None:
                drawn = randn_like_on([x.shape[0], 1, self.resolution, self.resolution], x, generator)
            noise = drawn.to(x.dtype) * self.noise_strength.to(x.dtype)
        elif self.use_noise and noise_mode == "const":
            noise = self.noise_const * self.noise_strength
        return modulated_conv2d_act_sg2(x, self.weight, styles, self.bias, noise, up=self.up, padding=1,
                                        resample_filter=self.resample_filter, slope=0.2, gain=SQRT2,
                                        clamp=self.conv_clamp, fused=fused,
                                        wsq=frozen(self, "wsq", self.weight, lambda t: t.square().sum(dim=[2, 3])))


class ToRGBLayer(torch.nn.Module):
    def __init__(self, in_channels: int, out_channels: int, w_dim: int, conv_clamp: float | None = None) -> None:
        super().__init__()
        self.conv_clamp = conv_clamp
        self.affine = FullyConnected(w_dim, in_channels, bias_init=1)
        self.weight = torch.nn.Parameter(init_randn(out_channels, in_channels, 1, 1))
        self.bias = torch.nn.Parameter(torch.zeros(out_channels))
        self.weight_gain = 1 / math.sqrt(in_channels)

    def forward(self, x: torch.Tensor, w: torch.Tensor, fused: bool | None) -> torch.Tensor:
        styles = self.affine(w) * self.weight_gain
        if x.dtype == torch.float16:
            x = modulated_conv2d_sg2(x, self.weight, styles, demodulate=False, fused=fused)
            return bias_act(x, self.bias, clamp=self.conv_clamp)
        # A 1x1 convolution to a handful of channels is a matrix product over the channel axis, and on
        # channels-last activations a plain one: (N, H*W, C) @ (N, C, 3).
        n, c, h, wd = x.shape
        kernel = self.weight[:, :, 0, 0].unsqueeze(0) * styles.unsqueeze(1)  # (N, 3, C)
        y = torch.baddbmm(self.bias.to(x.dtype).reshape(1, 1, -1), x.permute(0, 2, 3, 1).reshape(n, h * wd, c),
                          kernel.transpose(1, 2).to(x.dtype))
        y = y.reshape(n, h, wd, -1).permute(0, 3, 1, 2)
        if self.conv_clamp is not None and self.conv_clamp >= 0:
            y = y.clamp(-self.conv_clamp, self.conv_clamp)
        return y


class SynthesisBlock(torch.nn.Module):
    def __init__(self, in_channels: int, out_channels: int, w_dim: int, resolution: int, img_channels: int,
                 use_fp16: bool, conv_clamp: float | None, use_noise: bool) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.resolution = resolution
        self.use_fp16 = use_fp16
        self.num_conv = 1 if in_channels == 0 else 2
        self.num_torgb = 1
        if in_channels == 0:
            self.const = torch.nn.Parameter(init_randn(out_channels, resolution, resolution))
        else:
            self.conv0 = SynthesisLayer(in_channels, out_channels, w_dim, resolution, up=2,
                                        conv_clamp=conv_clamp, use_noise=use_noise)
        self.conv1 = SynthesisLayer(out_channels, out_channels, w_dim, resolution,
                                    conv_clamp=conv_clamp, use_noise=use_noise)
        self.torgb = ToRGBLayer(out_channels, img_channels, w_dim, conv_clamp=conv_clamp)
        self.register_buffer("resample_filter", setup_filter([1, 3, 3, 1]))

    def forward(self, x: torch.Tensor | None, img: torch.Tensor | None, ws: torch.Tensor, noise_mode: str,
                generator: torch.Generator | None, fp16: bool,
                memory_format: torch.memory_format = torch.contiguous_format,
                drawn: list[torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``drawn``: the convolutions' unit noise, already drawn (see :meth:`SG2Synthesis.synthesize`)."""
        d0, d1 = (drawn[0], drawn[-1]) if drawn else (None, None)
        dtype = torch.float16 if (self.use_fp16 and fp16) else torch.float32
        # One sample: its styles folded into the kernel.  A batch: activation scaling around one convolution
        # shared by the batch (oneDNN on the CPU, and the safe choice for fp16); NVlabs' grouped convolution
        # with per-sample kernels for float32 batches on CUDA.
        fused = ws.shape[0] == 1 or (dtype == torch.float32 and ws.device.type == "cuda")
        if self.in_channels == 0:
            x = self.const.to(dtype).unsqueeze(0).expand(ws.shape[0], -1, -1, -1)
            x = x.contiguous(memory_format=memory_format)
            x = self.conv1(x, ws[:, 0], noise_mode, generator, fused, d1)
        else:
            x = x.to(dtype).contiguous(memory_format=memory_format)
            x = self.conv0(x, ws[:, 0], noise_mode, generator, fused, d0)
            x = self.conv1(x, ws[:, 1], noise_mode, generator, fused, d1)
        if img is not None:
            img = upsample2d(img, self.resample_filter)
        y = self.torgb(x, ws[:, self.num_conv], fused).to(torch.float32)
        img = y if img is None else img + y
        return x, img


class SG2Synthesis(Synthesis):
    """StyleGAN2 synthesis: const 4x4 input, modulated/demodulated 3x3 convs with noise, ToRGB skips."""

    family = "stylegan2"
    # A batch runs as one batch through the blocks up to ``cpu_split_resolution`` (small activations, where
    # sharing each convolution's weights across the batch pays), and on the CPU one sample at a time above
    # it, each with its styles folded into the kernel: at 128 px and up the activations dwarf the weights,
    # and a batch's activation scaling costs two extra passes over them per layer.  0: one batch throughout.
    # (benchmarks/bench_stylegan.py; at official size, 512 px, batch 4 the split took 0.8x the time.)
    cpu_batch_per_sample = False
    cpu_split_resolution = 64

    def __init__(self, w_dim: int, img_resolution: int, img_channels: int, channels: Mapping[Any, int],
                 num_fp16_res: int = 0, conv_clamp: float | None = None, use_noise: bool = True) -> None:
        super().__init__()
        log2 = int(math.log2(img_resolution))
        if 2 ** log2 != img_resolution or img_resolution < 4:
            raise ValueError(f"img_resolution must be a power of two >= 4, got {img_resolution}")
        self.w_dim = int(w_dim)
        self.img_resolution = int(img_resolution)
        self.img_channels = int(img_channels)
        self.channels = {int(k): int(v) for k, v in channels.items()}
        wanted = [2 ** i for i in range(2, log2 + 1)]
        if any(self.channels.get(r, 0) < 1 for r in wanted):
            raise ValueError(f"channels must give a positive count for every resolution {wanted}, got {self.channels}")
        self.num_fp16_res = int(num_fp16_res)
        self.conv_clamp = conv_clamp
        self.use_noise = use_noise
        self.block_resolutions = [2 ** i for i in range(2, log2 + 1)]
        fp16_resolution = max(2 ** (log2 + 1 - self.num_fp16_res), 8)
        self.num_ws = 0
        for res in self.block_resolutions:
            in_ch = self.channels[res // 2] if res > 4 else 0
            block = SynthesisBlock(in_ch, self.channels[res], self.w_dim, res, self.img_channels,
                                   use_fp16=self.num_fp16_res > 0 and res >= fp16_resolution,
                                   conv_clamp=conv_clamp, use_noise=use_noise)
            self.num_ws += block.num_conv
            setattr(self, f"b{res}", block)
        self.num_ws += 1  # the last block's ToRGB
        self.register_buffer("w_avg", torch.zeros(self.w_dim))
        # Channels-last activations: several times faster convolutions and FIR filters with oneDNN on the
        # CPU, and the layout cuDNN's fp16 tensor-core kernels want.  Set False for the plain NCHW layout.
        self.channels_last = True

    @property
    def has_fp16(self) -> bool:
        return self.num_fp16_res > 0

    def config(self) -> dict[str, Any]:
        return dict(w_dim=self.w_dim, img_resolution=self.img_resolution, img_channels=self.img_channels,
                    channels={str(k): v for k, v in self.channels.items()}, num_fp16_res=self.num_fp16_res,
                    conv_clamp=self.conv_clamp, use_noise=self.use_noise)

    def synthesize(self, ws: torch.Tensor, noise_mode: str = "const",
                   generator: torch.Generator | None = None) -> torch.Tensor:
        ws = ws.to(torch.float32)
        n = ws.shape[0]
        fp16 = self.fp16_enabled and ws.device.type == "cuda"
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        split = self.cpu_split_resolution if ws.device.type == "cpu" and n > 1 else 0
        head = [r for r in self.block_resolutions if not split or r <= split]
        tail = self.block_resolutions[len(head):]
        x, img, w_idx = self._run_blocks(head, ws, 0, None, None, noise_mode, generator, fp16, fmt, None)
        if not tail:
            return img.contiguous()
        drawn: dict[int, list[torch.Tensor]] = {}
        if noise_mode == "random" and self.use_noise:  # drawn for the whole batch, in the order one batch draws
            for res in tail:
                drawn[res] = [randn_like_on([n, 1, res, res], ws, generator)
                              for _ in range(getattr(self, f"b{res}").num_conv)]
        imgs = []
        for i in range(n):
            mine = {res: [t[i:i + 1] for t in ts] for res, ts in drawn.items()} if drawn else None
            imgs.append(self._run_blocks(tail, ws[i:i + 1], w_idx, x[i:i + 1], img[i:i + 1], noise_mode, generator,
                                         fp16, fmt, mine)[1])
        return torch.cat(imgs).contiguous()

    def _run_blocks(self, resolutions: list[int], ws: torch.Tensor, w_idx: int, x: torch.Tensor | None,
                    img: torch.Tensor | None, noise_mode: str, generator: torch.Generator | None, fp16: bool,
                    fmt: torch.memory_format, drawn: dict[int, list[torch.Tensor]] | None,
                    ) -> tuple[torch.Tensor, torch.Tensor, int]:
        for res in resolutions:
            block = getattr(self, f"b{res}")
            cur = ws.narrow(1, w_idx, block.num_conv + block.num_torgb)
            w_idx += block.num_conv
            x, img = block(x, img, cur, noise_mode, generator, fp16, fmt, drawn.get(res) if drawn else None)
        assert x is not None and img is not None
        return x, img, w_idx
