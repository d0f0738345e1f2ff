"""The ImageNet diffusion UNet (our own module) and its loader for openai/guided-diffusion's released ``.pt`` files.

The released models (``256x256_diffusion_uncond.pt`` and the 512 px fine-tune the 2021
notebooks used, ``512x512_diffusion_uncond_finetune_008100.pt``) are plain state dicts
(``torch.save(model.state_dict())``), read here with ``torch.load(weights_only=True)``.
Nothing in a file says which architecture it holds, so the configuration comes from the
checkpoint's registry name (:data:`CONFIGS`, the flags the guided-diffusion README and the
notebooks pass) and every tensor is then matched by name and shape.

The module keeps the release's parameter names: ``time_embed.{0,2}``,
``input_blocks.N.M`` (a 3x3 stem conv, residual blocks, attention blocks, and down-sampling
residual blocks), ``middle_block.{0,1,2}``, ``output_blocks.N.M`` and ``out.{0,2}``; a
residual block has ``in_layers.{0,2}`` (GroupNorm(32), conv), ``emb_layers.1`` (Linear),
``out_layers.{0,3}`` and, where the width changes, ``skip_connection``; an attention block has
``norm``, ``qkv`` and ``proj_out`` (1-D 1x1 convolutions) with the "legacy" head order (heads
split before q/k/v).  Group norms run in float32 as the release's ``GroupNorm32`` does.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from renderer.checkpoint_io import CheckpointError, load_state_dict, strict_copy


@dataclass(frozen=True)
class UNetConfig:
    image_size: int = 256
    num_channels: int = 256
    num_res_blocks: int = 2
    channel_mult: tuple[float, ...] = (1, 1, 2, 2, 4, 4)
    attention_resolutions: tuple[int, ...] = (32, 16, 8)  # in pixels; attention where image_size // ds is one
    num_head_channels: int = 64
    learn_sigma: bool = True
    resblock_updown: bool = True
    use_scale_shift_norm: bool = True
    groups: int = 32

    @property
    def out_channels(self) -> int:
        return 6 if self.learn_sigma else 3

    @property
    def attention_ds(self) -> set[int]:
        return {self.image_size // r for r in self.attention_resolutions}


# guided-diffusion's README: "--attention_resolutions 32,16,8 --class_cond False --diffusion_steps 1000
# --image_size 256 --learn_sigma True --noise_schedule linear --num_channels 256 --num_head_channels 64
# --num_res_blocks 2 --resblock_updown True --use_fp16 True --use_scale_shift_norm True"; the 512 model
# differs in image_size (and so channel_mult, script_util.create_model's table for 512: 0.5,1,1,2,2,4,4).
CONFIGS = {
    256: UNetConfig(image_size=256, channel_mult=(1, 1, 2, 2, 4, 4)),
    512: UNetConfig(image_size=512, channel_mult=(0.5, 1, 1, 2, 2, 4, 4)),
}


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of (possibly fractional) timesteps: [cos(t f), sin(t f)]."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t[:, None].float() * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


class GroupNorm32(nn.GroupNorm):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.float()).type(x.dtype)


class ResBlock(nn.Module):
    def __init__(self, ch: int, emb: int, out: int, cfg: UNetConfig, up: bool = False, down: bool = False):
        super().__init__()
        self.in_layers = nn.Sequential(GroupNorm32(cfg.groups, ch), nn.SiLU(), nn.Conv2d(ch, out, 3, padding=1))
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb, 2 * out if cfg.use_scale_shift_norm else out))
        self.out_layers = nn.Sequential(GroupNorm32(cfg.groups, out), nn.SiLU(), nn.Dropout(0.0),
                                        nn.Conv2d(out, out, 3, padding=1))
        self.skip_connection = nn.Identity() if out == ch else nn.Conv2d(ch, out, 1)
        self.up, self.down = up, down
        self.scale_shift = cfg.use_scale_shift_norm

    def _resample(self, x: torch.Tensor) -> torch.Tensor:
        if self.up:
            return F.interpolate(x, scale_factor=2, mode="nearest")
        if self.down:
            return F.avg_pool2d(x, 2)
        return x

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.in_layers[1](self.in_layers[0](x))
        h = self.in_layers[2](self._resample(h))
        x = self._resample(x)
        e = self.emb_layers(emb).type(h.dtype)[..., None, None]
        if self.scale_shift:
            scale, shift = e.chunk(2, dim=1)
            h = self.out_layers[0](h) * (1 + scale) + shift
            h = self.out_layers[3](self.out_layers[1](h))
        else:
            h = self.out_layers(h + e)
        return self.skip_connection(x) + h


class AttentionBlock(nn.Module):
    def __init__(self, ch: int, head_channels: int, groups: int):
        super().__init__()
        self.heads = ch // head_channels
        self.norm = GroupNorm32(groups, ch)
        self.qkv = nn.Conv1d(ch, 3 * ch, 1)
        self.proj_out = nn.Conv1d(ch, ch, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        b, c, hh, ww = x.shape
        flat = x.reshape(b, c, -1)
        qkv = self.qkv(self.norm(flat))
        n = qkv.shape[-1]
        ch = c // self.heads
        q, k, v = qkv.reshape(b * self.heads, 3 * ch, n).split(ch, dim=1)  # legacy order: heads first
        scale = ch ** -0.25
        w = torch.softmax(torch.einsum("bct,bcs->bts", q * scale, k * scale).float(), dim=-1).type(q.dtype)
        a = torch.einsum("bts,bcs->bct", w, v).reshape(b, c, n)
        return (flat + self.proj_out(a)).reshape(b, c, hh, ww)


class Stem(nn.Conv2d):
    """The 3x3 input convolution (``input_blocks.0.0``); ignores the embedding."""

    def __init__(self, cin: int, cout: int):
        super().__init__(cin, cout, 3, padding=1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:  # type: ignore[override]
        return super().forward(x)


class Step(nn.ModuleList):
    """One entry of input_blocks / middle_block / output_blocks: its layers by index, each given the embedding."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        for layer in self:
            x = layer(x, emb)
        return x


class UNet(nn.Module):
    """``forward(x[N, 3, S, S] in about [-1, 1], t[N]) -> [N, 6, S, S]``: predicted noise and variance values."""

    def __init__(self, cfg: UNetConfig):
        super().__init__()
        self.cfg = cfg
        mc = cfg.num_channels
        emb = 4 * mc
        self.time_embed = nn.Sequential(nn.Linear(mc, emb), nn.SiLU(), nn.Linear(emb, emb))
        ch = int(cfg.channel_mult[0] * mc)
        stem = Step([Stem(3, ch)])
        blocks: list[Step] = [stem]
        chans = [ch]
        ds = 1
        for level, mult in enumerate(cfg.channel_mult):
            for _ in range(cfg.num_res_blocks):
                layers: list[nn.Module] = [ResBlock(ch, emb, int(mult * mc), cfg)]
                ch = int(mult * mc)
                if ds in cfg.attention_ds:
                    layers.append(AttentionBlock(ch, cfg.num_head_channels, cfg.groups))
                blocks.append(Step(layers))
                chans.append(ch)
            if level != len(cfg.channel_mult) - 1:
                if not cfg.resblock_updown:
                    raise CheckpointError("only resblock_updown models (the released ones) are supported")
                blocks.append(Step([ResBlock(ch, emb, ch, cfg, down=True)]))
                chans.append(ch)
                ds *= 2
        self.input_blocks = nn.ModuleList(blocks)
        self.middle_block = Step([ResBlock(ch, emb, ch, cfg), AttentionBlock(ch, cfg.num_head_channels, cfg.groups),
                                  ResBlock(ch, emb, ch, cfg)])
        outs: list[Step] = []
        for level, mult in list(enumerate(cfg.channel_mult))[::-1]:
            for i in range(cfg.num_res_blocks + 1):
                layers = [ResBlock(ch + chans.pop(), emb, int(mc * mult), cfg)]
                ch = int(mc * mult)
                if ds in cfg.attention_ds:
                    layers.append(AttentionBlock(ch, cfg.num_head_channels, cfg.groups))
                if level and i == cfg.num_res_blocks:
                    layers.append(ResBlock(ch, emb, ch, cfg, up=True))
                    ds //= 2
                outs.append(Step(layers))
        self.output_blocks = nn.ModuleList(outs)
        self.out = nn.Sequential(GroupNorm32(cfg.groups, ch), nn.SiLU(), nn.Conv2d(ch, cfg.out_channels, 3, padding=1))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        emb = self.time_embed(timestep_embedding(t, self.cfg.num_channels))
        hs = []
        h = x
        for block in self.input_blocks:
            h = block(h, emb)
            hs.append(h)
        h = self.middle_block(h, emb)
        for block in self.output_blocks:
            h = block(torch.cat([h, hs.pop()], dim=1), emb)
        return self.out(h.type(x.dtype))


def load_unet(path: str | Path, cfg: UNetConfig) -> UNet:
    """Our :class:`UNet` for ``cfg`` with the weights of a released guided-diffusion ``.pt``."""
    path = Path(path)
    sd = load_state_dict(path, "guided-diffusion state dict")
    model = UNet(cfg)
    strict_copy(model, sd, str(path), f"guided-diffusion {cfg.image_size}x{cfg.image_size} UNet state dict")
    for name, p in model.state_dict().items():
        if p.is_floating_point() and not torch.isfinite(p).all():
            raise CheckpointError(f"{path}: {name} holds NaN or infinite values: damaged weights")
    return model.eval().requires_grad_(False)


def tiny_config() -> UNetConfig:
    """The released layout at 32 px, narrow: 3 levels, attention at 8 px, 2 heads of 16 channels."""
    return UNetConfig(image_size=32, num_channels=32, num_res_blocks=1, channel_mult=(1, 1, 2),
                      attention_resolutions=(8,), num_head_channels=16)


def random_unet(cfg: UNetConfig, seed: int = 0) -> UNet:
    """Randomly initialised; the layers the release initialises to zero (each residual branch's last conv, the
    attention output, the final conv) start at a hundredth of their default scale, so an untrained model
    predicts little noise and the sample stays in range."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = UNet(cfg)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.endswith(("out_layers.3.weight", "proj_out.weight")) or name == "out.2.weight":
                    p.mul_(0.01)
        return model.eval().requires_grad_(False)


def activation_bytes(cfg: UNetConfig, size: int, act_bytes: int = 4) -> int:
    """What one forward+backward at ``size`` px keeps (for the memory model): ~12 tensors per block, plus the
    attention matrices at the attention levels."""
    mc, total, res, ds = cfg.num_channels, 0.0, size, 1
    blocks = 2 * cfg.num_res_blocks + 2  # down path, up path (one more), the resampling block
    for mult in cfg.channel_mult:
        c = mult * mc
        total += blocks * 12 * c * res * res
        if ds in cfg.attention_ds:
            total += blocks * (c // cfg.num_head_channels) * (res * res) ** 2
        res, ds = max(1, res // 2), ds * 2
    return int(total * act_bytes)


def parameter_names(cfg: UNetConfig) -> Sequence[str]:
    with torch.device("meta"):
        return list(UNet(cfg).state_dict())
