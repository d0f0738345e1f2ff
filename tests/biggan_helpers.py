"""Tiny random BigGAN-deep files in the pytorch-pretrained-biggan format, and an independent reference forward.

Where each format fact comes from (huggingface/pytorch-pretrained-BigGAN, read, not copied):

* ``model.py``: ``BigGAN`` holds ``embeddings = nn.Linear(num_classes, z_dim, bias=False)`` and
  ``generator``; ``Generator`` holds ``gen_z`` (snlinear, 2*z_dim -> 4*4*16*ch), ``layers`` (a
  ``ModuleList``: a ``SelfAttn`` inserted before layer ``attention_layer_position``, so later
  indices shift by one), ``bn`` (unconditional ``BigGANBatchNorm`` with ``weight``/``bias``) and
  ``conv_to_rgb`` (snconv2d 3x3, ch -> ch; the first 3 channels are the picture).  ``GenBlock``:
  ``bn_0..bn_3`` (conditional: ``scale``/``offset`` snlinear without bias) and ``conv_0`` (1x1,
  in -> in/4), ``conv_1``/``conv_2`` (3x3), ``conv_3`` (1x1, -> out); ``SelfAttn``:
  ``snconv1x1_theta``/``phi`` (ch/8), ``snconv1x1_g`` (ch/2), ``snconv1x1_o_conv`` (no bias) and
  ``gamma``.  Every batch norm has ``running_means`` / ``running_vars`` of shape ``[n_stats, C]``.
* ``torch.nn.utils.spectral_norm`` (used by ``snconv2d``/``snlinear``) replaces ``weight`` by the
  parameter ``weight_orig`` and the buffers ``weight_u`` ``[out]`` and ``weight_v`` ``[in*k*k]``.
* ``convert_tf_to_pytorch.py``: the released files are ``torch.save(model.state_dict())`` (from
  2019 torch: the legacy, non-zip serialisation) and ``config.to_json_string()``
  (``json.dumps(indent=2, sort_keys=True)``).
"""
from __future__ import annotations

import math
from collections import OrderedDict
from pathlib import Path

import torch

from renderer.biggan.model import BigGANConfig


def official_shapes(cfg: BigGANConfig) -> "OrderedDict[str, tuple[int, ...]]":
    """Every key of the package's state dict and its shape, derived from the config as its model.py builds it."""
    ch, cond, ns = cfg.channel_width, 2 * cfg.z_dim, cfg.n_stats
    shapes: OrderedDict[str, tuple[int, ...]] = OrderedDict()

    def sn(name: str, out: int, inp: int, k: int | None, bias: bool) -> None:
        shapes[f"{name}.weight_orig"] = (out, inp, k, k) if k else (out, inp)
        if bias:
            shapes[f"{name}.bias"] = (out,)
        shapes[f"{name}.weight_u"] = (out,)
        shapes[f"{name}.weight_v"] = (inp * (k or 1) * (k or 1),)

    def bn(name: str, c: int, conditional: bool = True) -> None:
        shapes[f"{name}.running_means"] = (ns, c)
        shapes[f"{name}.running_vars"] = (ns, c)
        if conditional:
            sn(f"{name}.scale", c, cond, None, False)
            sn(f"{name}.offset", c, cond, None, False)
        else:
            shapes[f"{name}.weight"] = (c,)
            shapes[f"{name}.bias"] = (c,)

    shapes["embeddings.weight"] = (cfg.z_dim, cfg.num_classes)
    sn("generator.gen_z", 4 * 4 * 16 * ch, cond, None, True)
    idx = 0
    for i, (_up, cin, cout) in enumerate(cfg.layers):
        if i == cfg.attention_layer_position:
            c = ch * cin
            p = f"generator.layers.{idx}"
            sn(f"{p}.snconv1x1_theta", c // 8, c, 1, False)
            sn(f"{p}.snconv1x1_phi", c // 8, c, 1, False)
            sn(f"{p}.snconv1x1_g", c // 2, c, 1, False)
            sn(f"{p}.snconv1x1_o_conv", c, c // 2, 1, False)
            shapes[f"{p}.gamma"] = (1,)
            idx += 1
        p = f"generator.layers.{idx}"
        a, m, b = ch * cin, ch * cin // 4, ch * cout
        bn(f"{p}.bn_0", a)
        sn(f"{p}.conv_0", m, a, 1, True)
        bn(f"{p}.bn_1", m)
        sn(f"{p}.conv_1", m, m, 3, True)
        bn(f"{p}.bn_2", m)
        sn(f"{p}.conv_2", m, m, 3, True)
        bn(f"{p}.bn_3", m)
        sn(f"{p}.conv_3", b, m, 1, True)
        idx += 1
    last = ch * cfg.layers[-1][2]
    bn("generator.bn", last, conditional=False)
    sn("generator.conv_to_rgb", last, last, 3, True)
    return shapes


def random_official_state(cfg: BigGANConfig, seed: int = 0) -> "OrderedDict[str, torch.Tensor]":
    g = torch.Generator().manual_seed(seed)
    sd: OrderedDict[str, torch.Tensor] = OrderedDict()
    for key, shape in official_shapes(cfg).items():
        if key.endswith((".weight_u", ".weight_v")):
            t = torch.randn(shape, generator=g)
            t = t / t.norm()
        elif key.endswith("running_vars"):
            t = torch.rand(shape, generator=g) + 0.5
        elif key.endswith("running_means"):
            t = torch.randn(shape, generator=g) * 0.1
        elif key.endswith("gamma"):
            t = torch.full(shape, 0.7)
        elif key == "generator.bn.weight":
            t = 1 + 0.1 * torch.randn(shape, generator=g)
        else:
            fan_in = math.prod(shape[1:]) if len(shape) > 1 else 1
            t = torch.randn(shape, generator=g) / math.sqrt(fan_in) * (3.0 if key.endswith("weight_orig") else 0.1)
        sd[key] = t
    # u and v as the converter leaves them: power iteration from u (convert_tf_to_pytorch.py, "Prepare
    # SpectralNorm buffers by running one step of Spectral Norm"); a few steps so sigma is the top singular value.
    for key in [k for k in sd if k.endswith(".weight_orig")]:
        prefix = key[: -len(".weight_orig")]
        mat = sd[key].reshape(sd[key].shape[0], -1)
        u = sd[prefix + ".weight_u"]
        for _ in range(8):
            v = torch.nn.functional.normalize(mat.t() @ u, dim=0, eps=cfg.eps)
            u = torch.nn.functional.normalize(mat @ v, dim=0, eps=cfg.eps)
        sd[prefix + ".weight_u"], sd[prefix + ".weight_v"] = u, v
    return sd


def write_official(folder: Path, cfg: BigGANConfig, name: str = "biggan-tiny", seed: int = 0,
                   legacy: bool = True) -> tuple[Path, Path, dict]:
    """``<name>.bin`` (torch.save of the state dict, legacy serialisation like the 2019 release) and ``<name>.json``."""
    folder.mkdir(parents=True, exist_ok=True)
    sd = random_official_state(cfg, seed)
    bin_path, json_path = folder / f"{name}.bin", folder / f"{name}.json"
    torch.save(sd, bin_path, _use_new_zipfile_serialization=not legacy)
    json_path.write_text(cfg.to_json(), encoding="utf-8")
    return bin_path, json_path, sd


# --------------------------------------------------------------------------- independent float64 reference


def reference_forward(sd: dict, cfg: BigGANConfig, z: torch.Tensor, cls: torch.Tensor, truncation: float) -> torch.Tensor:
    """The package's forward pass re-derived in float64, functionally, straight from the official state dict.

    Spectral norm in eval mode: W = weight_orig / (u . (W_mat v)).  Batch-norm statistics for a
    truncation: ``coef, i = modf(t / step)``; mean = m[i] * coef + m[i+1] * (1 - coef) (as the package).
    """
    import torch.nn.functional as F

    d = {k: v.double() for k, v in sd.items()}

    def w(name: str) -> torch.Tensor:
        wo = d[f"{name}.weight_orig"]
        sigma = d[f"{name}.weight_u"] @ (wo.reshape(wo.shape[0], -1) @ d[f"{name}.weight_v"])
        return wo / sigma

    step = 1.0 / (cfg.n_stats - 1)

    def stats(name: str) -> tuple[torch.Tensor, torch.Tensor]:
        coef, i = math.modf(truncation / step)
        i = int(i)
        m, v = d[f"{name}.running_means"], d[f"{name}.running_vars"]
        if coef:
            return m[i] * coef + m[i + 1] * (1 - coef), v[i] * coef + v[i + 1] * (1 - coef)
        return m[i], v[i]

    def cbn(name: str, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        m, v = stats(name)
        gain = 1 + cond @ w(f"{name}.scale").T
        bias = cond @ w(f"{name}.offset").T
        return (x - m[None, :, None, None]) / (v[None, :, None, None] + cfg.eps).sqrt() * gain[..., None, None] \
            + bias[..., None, None]

    def conv(name: str, x: torch.Tensor, pad: int = 0, bias: bool = True) -> torch.Tensor:
        return F.conv2d(x, w(name), d[f"{name}.bias"] if bias else None, padding=pad)

    z, cls = z.double(), cls.double()
    cond = torch.cat([z, cls @ d["embeddings.weight"].T], 1)
    x = cond @ w("generator.gen_z").T + d["generator.gen_z.bias"]
    x = x.view(-1, 4, 4, 16 * cfg.channel_width).permute(0, 3, 1, 2)
    idx = 0
    for i, (up, cin, cout) in enumerate(cfg.layers):
        if i == cfg.attention_layer_position:
            p = f"generator.layers.{idx}"
            n, c, h, wd = x.shape
            th = conv(f"{p}.snconv1x1_theta", x, bias=False).reshape(n, c // 8, h * wd)
            ph = F.max_pool2d(conv(f"{p}.snconv1x1_phi", x, bias=False), 2).reshape(n, c // 8, -1)
            gg = F.max_pool2d(conv(f"{p}.snconv1x1_g", x, bias=False), 2).reshape(n, c // 2, -1)
            att = torch.softmax(th.transpose(1, 2) @ ph, -1)
            o = (gg @ att.transpose(1, 2)).reshape(n, c // 2, h, wd)
            x = x + d[f"{p}.gamma"] * conv(f"{p}.snconv1x1_o_conv", o, bias=False)
            idx += 1
        p = f"generator.layers.{idx}"
        x0 = x
        h = conv(f"{p}.conv_0", cbn(f"{p}.bn_0", x, cond).relu())
        h = cbn(f"{p}.bn_1", h, cond).relu()
        if up:
            h = h.repeat_interleave(2, 2).repeat_interleave(2, 3)
        h = conv(f"{p}.conv_1", h, 1)
        h = conv(f"{p}.conv_2", cbn(f"{p}.bn_2", h, cond).relu(), 1)
        h = conv(f"{p}.conv_3", cbn(f"{p}.bn_3", h, cond).relu())
        if cin != cout:
            x0 = x0[:, : x0.shape[1] // 2]
        if up:
            x0 = x0.repeat_interleave(2, 2).repeat_interleave(2, 3)
        x = h + x0
        idx += 1
    m, v = stats("generator.bn")
    x = (x - m[None, :, None, None]) / (v[None, :, None, None] + cfg.eps).sqrt() \
        * d["generator.bn.weight"][None, :, None, None] + d["generator.bn.bias"][None, :, None, None]
    x = conv("generator.conv_to_rgb", x.relu(), 1)
    return x[:, :3].tanh()
