"""Tiny random guided-diffusion UNets written as the release's state dict, and an independent float64 forward.

Where each format fact comes from (openai/guided-diffusion, read, not copied):

* ``scripts``/README: the released ``256x256_diffusion_uncond.pt`` is ``torch.save(model.state_dict())`` of
  ``UNetModel`` built with ``attention_resolutions=32,16,8, learn_sigma, num_channels=256,
  num_head_channels=64, num_res_blocks=2, resblock_updown, use_scale_shift_norm`` (``script_util.create_model``
  turns the resolutions into downsampling factors ``image_size // res`` and picks ``channel_mult``
  ``1,1,2,2,4,4`` at 256 and ``0.5,1,1,2,2,4,4`` at 512).
* ``unet.py``: ``time_embed`` = Linear(mc, 4mc), SiLU, Linear(4mc, 4mc); ``input_blocks[0]`` = a 3x3 conv;
  per level ``num_res_blocks`` x (ResBlock [+ AttentionBlock where the factor is listed]) then, except at the
  last level, a down-sampling ResBlock; ``middle_block`` = ResBlock, AttentionBlock, ResBlock;
  ``output_blocks`` per level (reversed) ``num_res_blocks + 1`` x (ResBlock on the concatenated skip
  [+ AttentionBlock] [+ an up-sampling ResBlock after the last one, except at level 0]); ``out`` = GroupNorm,
  SiLU, 3x3 conv.  ResBlock: ``in_layers`` (GroupNorm, SiLU, conv), ``emb_layers`` (SiLU, Linear to 2 x out
  with scale-shift norm), ``out_layers`` (GroupNorm, SiLU, Dropout, conv), ``skip_connection`` (1x1 conv when
  the width changes); up/down resample both paths after ``in_layers``' SiLU (nearest x2 / 2x2 average).
  AttentionBlock: ``norm``, ``qkv`` and ``proj_out`` as 1-D convolutions; "legacy" order: the qkv channels are
  split into heads first, then into q, k, v; both q and k scaled by ``ch ** -0.25``.
* ``nn.py``: ``normalization`` = GroupNorm(32) computed in float32; ``timestep_embedding`` =
  ``cat(cos(t f), sin(t f))`` with ``f = exp(-ln(10000) * arange(half) / half)``.
"""
from __future__ import annotations

import math
from collections import OrderedDict
from pathlib import Path

import torch
import torch.nn.functional as F

from renderer.diffusion.unet import UNetConfig


def layout(cfg: UNetConfig) -> list[tuple[str, list[tuple]]]:
    """(prefix, layers) for every entry of input_blocks / middle_block / output_blocks, as the release builds them.
    A layer is ("stem", name, cin, cout) | ("res", name, cin, cout, "up"|"down"|"") | ("attn", name, ch)."""
    mc = cfg.num_channels
    attn = {cfg.image_size // r for r in cfg.attention_resolutions}
    ch = int(cfg.channel_mult[0] * mc)
    out: list[tuple[str, list[tuple]]] = [("input_blocks.0", [("stem", "input_blocks.0.0", 3, ch)])]
    chans, ds, idx = [ch], 1, 1
    for level, mult in enumerate(cfg.channel_mult):
        for _ in range(cfg.num_res_blocks):
            p = f"input_blocks.{idx}"
            layers = [("res", f"{p}.0", ch, int(mult * mc), "")]
            ch = int(mult * mc)
            if ds in attn:
                layers.append(("attn", f"{p}.1", ch))
            out.append((p, layers))
            chans.append(ch)
            idx += 1
        if level != len(cfg.channel_mult) - 1:
            out.append((f"input_blocks.{idx}", [("res", f"input_blocks.{idx}.0", ch, ch, "down")]))
            chans.append(ch)
            ds *= 2
            idx += 1
    out.append(("middle_block", [("res", "middle_block.0", ch, ch, ""), ("attn", "middle_block.1", ch),
                                 ("res", "middle_block.2", ch, ch, "")]))
    idx = 0
    for level, mult in list(enumerate(cfg.channel_mult))[::-1]:
        for i in range(cfg.num_res_blocks + 1):
            p = f"output_blocks.{idx}"
            layers = [("res", f"{p}.0", ch + chans.pop(), int(mc * mult), "")]
            ch = int(mc * mult)
            if ds in attn:
                layers.append(("attn", f"{p}.{len(layers)}", ch))
            if level and i == cfg.num_res_blocks:
                layers.append(("res", f"{p}.{len(layers)}", ch, ch, "up"))
                ds //= 2
            out.append((p, layers))
            idx += 1
    return out


def official_shapes(cfg: UNetConfig) -> "OrderedDict[str, tuple[int, ...]]":
    mc, emb = cfg.num_channels, 4 * cfg.num_channels
    shapes: OrderedDict[str, tuple[int, ...]] = OrderedDict()
    shapes["time_embed.0.weight"], shapes["time_embed.0.bias"] = (emb, mc), (emb,)
    shapes["time_embed.2.weight"], shapes["time_embed.2.bias"] = (emb, emb), (emb,)
    for _, layers in layout(cfg):
        for layer in layers:
            kind, name = layer[0], layer[1]
            if kind == "stem":
                shapes[f"{name}.weight"], shapes[f"{name}.bias"] = (layer[3], 3, 3, 3), (layer[3],)
            elif kind == "res":
                cin, cout = layer[2], layer[3]
                shapes.update({f"{name}.in_layers.0.weight": (cin,), f"{name}.in_layers.0.bias": (cin,),
                               f"{name}.in_layers.2.weight": (cout, cin, 3, 3), f"{name}.in_layers.2.bias": (cout,),
                               f"{name}.emb_layers.1.weight": (2 * cout, emb), f"{name}.emb_layers.1.bias": (2 * cout,),
                               f"{name}.out_layers.0.weight": (cout,), f"{name}.out_layers.0.bias": (cout,),
                               f"{name}.out_layers.3.weight": (cout, cout, 3, 3), f"{name}.out_layers.3.bias": (cout,)})
                if cin != cout:
                    shapes[f"{name}.skip_connection.weight"] = (cout, cin, 1, 1)
                    shapes[f"{name}.skip_connection.bias"] = (cout,)
            else:
                c = layer[2]
                shapes.update({f"{name}.norm.weight": (c,), f"{name}.norm.bias": (c,),
                               f"{name}.qkv.weight": (3 * c, c, 1), f"{name}.qkv.bias": (3 * c,),
                               f"{name}.proj_out.weight": (c, c, 1), f"{name}.proj_out.bias": (c,)})
    ch = int(cfg.channel_mult[0] * mc)
    shapes["out.0.weight"], shapes["out.0.bias"] = (ch,), (ch,)
    shapes["out.2.weight"], shapes["out.2.bias"] = (cfg.out_channels, ch, 3, 3), (cfg.out_channels,)
    return shapes


def write_official(path: Path, cfg: UNetConfig, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    sd: dict[str, torch.Tensor] = OrderedDict()
    for key, shape in official_shapes(cfg).items():
        if len(shape) == 1 and (".norm." in key or "layers.0." in key or key.startswith("out.0")) and key.endswith("weight"):
            t = 1 + 0.1 * torch.randn(shape, generator=g)
        elif len(shape) == 1:
            t = 0.1 * torch.randn(shape, generator=g)
        else:
            t = torch.randn(shape, generator=g) / math.sqrt(math.prod(shape[1:]))
        sd[key] = t
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(sd, path)
    return sd


def reference_forward(sd: dict, cfg: UNetConfig, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The release's forward in float64, functionally, from the state dict and :func:`layout`."""
    d = {k: v.double() for k, v in sd.items()}
    mc = cfg.num_channels
    half = mc // 2
    freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float64) / half)
    args = t.double()[:, None] * freqs[None]
    emb = torch.cat([args.cos(), args.sin()], 1)
    emb = F.linear(F.silu(F.linear(emb, d["time_embed.0.weight"], d["time_embed.0.bias"])),
                   d["time_embed.2.weight"], d["time_embed.2.bias"])

    def gn(name: str, h: torch.Tensor) -> torch.Tensor:
        return F.group_norm(h, 32, d[f"{name}.weight"], d[f"{name}.bias"], 1e-5)

    def res(name: str, h: torch.Tensor, cin: int, cout: int, mode: str) -> torch.Tensor:
        def resample(v: torch.Tensor) -> torch.Tensor:
            if mode == "up":
                return v.repeat_interleave(2, 2).repeat_interleave(2, 3)
            if mode == "down":
                return (v[..., 0::2, 0::2] + v[..., 1::2, 0::2] + v[..., 0::2, 1::2] + v[..., 1::2, 1::2]) / 4
            return v
        a = resample(F.silu(gn(f"{name}.in_layers.0", h)))
        a = F.conv2d(a, d[f"{name}.in_layers.2.weight"], d[f"{name}.in_layers.2.bias"], padding=1)
        e = F.linear(F.silu(emb), d[f"{name}.emb_layers.1.weight"], d[f"{name}.emb_layers.1.bias"])[..., None, None]
        scale, shift = e[:, :cout], e[:, cout:]
        a = F.silu(gn(f"{name}.out_layers.0", a) * (1 + scale) + shift)
        a = F.conv2d(a, d[f"{name}.out_layers.3.weight"], d[f"{name}.out_layers.3.bias"], padding=1)
        skip = resample(h)
        if cin != cout:
            skip = F.conv2d(skip, d[f"{name}.skip_connection.weight"], d[f"{name}.skip_connection.bias"])
        return skip + a

    def attn(name: str, h: torch.Tensor, c: int) -> torch.Tensor:
        b, _, hh, ww = h.shape
        flat = h.reshape(b, c, -1)
        qkv = F.conv1d(F.group_norm(flat, 32, d[f"{name}.norm.weight"], d[f"{name}.norm.bias"], 1e-5),
                       d[f"{name}.qkv.weight"], d[f"{name}.qkv.bias"])
        heads = c // cfg.num_head_channels
        hc = cfg.num_head_channels
        per = qkv.reshape(b, heads, 3 * hc, -1)
        q, k, v = per[:, :, :hc], per[:, :, hc:2 * hc], per[:, :, 2 * hc:]
        w = torch.softmax(torch.einsum("bhct,bhcs->bhts", q, k) / math.sqrt(hc), dim=-1)
        o = torch.einsum("bhts,bhcs->bhct", w, v).reshape(b, c, -1)
        return (flat + F.conv1d(o, d[f"{name}.proj_out.weight"], d[f"{name}.proj_out.bias"])).reshape(b, c, hh, ww)

    def run(layers: list[tuple], h: torch.Tensor) -> torch.Tensor:
        for layer in layers:
            if layer[0] == "stem":
                h = F.conv2d(h, d[f"{layer[1]}.weight"], d[f"{layer[1]}.bias"], padding=1)
            elif layer[0] == "res":
                h = res(layer[1], h, layer[2], layer[3], layer[4])
            else:
                h = attn(layer[1], h, layer[2])
        return h

    h, skips = x.double(), []
    for prefix, layers in layout(cfg):
        if prefix.startswith("input_blocks"):
            h = run(layers, h)
            skips.append(h)
        elif prefix == "middle_block":
            h = run(layers, h)
        else:
            h = run(layers, torch.cat([h, skips.pop()], 1))
    h = F.silu(gn("out.0", h))
    return F.conv2d(h, d["out.2.weight"], d["out.2.bias"], padding=1)
