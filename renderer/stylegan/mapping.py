"""StyleGAN's mapping network (z -> w), read from the same checkpoint files as the synthesis network.

Strange Attractions skips the mapping network; StyleGAN+CLIP and latent walks need
it: z-space sampling, truncation through the mapping network (``w_avg + psi * (w -
w_avg)`` on the first ``cutoff`` layers), and a starting W to optimise.

One module covers the formats the synthesis loaders read:

* ``nvlabs`` (stylegan2-ada-pytorch, stylegan3): ``G_ema.mapping`` with ``fc{i}.weight``
  ``[out, in]``, ``fc{i}.bias``, ``w_avg``; ``x = lrelu(x W^T * g + b * lrmul) * sqrt(2)`` with
  ``g = lrmul / sqrt(in)``, after normalising z's second moment.
* ``tf`` StyleGAN2: ``Gs.components.mapping`` variables ``Dense{i}/weight`` ``[in, out]`` and
  ``Dense{i}/bias``, the same arithmetic (``fused_bias_act`` has gain sqrt(2)).
* ``tf`` StyleGAN (v1): the same variables, but the sqrt(2) gain is in the weight's
  He scale and the leaky ReLU has no gain: ``x = lrelu(x W * sqrt(2) * g + b * lrmul)``.
* ``rosinality``: ``g_ema`` keys ``style.{1..n}.weight`` ``[out, in]`` / ``.bias`` after a
  ``PixelNorm``; ``EqualLinear`` with ``fused_lrelu`` is the NVlabs arithmetic.

Conditional networks (class labels) are refused with a clear error: the exhibits are
unconditional.  Reading is additive to :mod:`renderer.stylegan.loaders`: the synthesis
path is untouched; after the first read the mapping is cached as safetensors with its
config in the file's metadata, so later starts read no pickle.
"""
from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from renderer.stylegan.unpickle import CheckpointError, PersistentObject, TFNetwork, load_nvlabs_pickle

log = logging.getLogger(__name__)

STYLES = ("sg2", "sg1")  # where the sqrt(2) gain sits: after the activation (sg2), or in the weight (sg1)
CACHE_VERSION = 1


class MappingNetwork(torch.nn.Module):
    """``forward(z) -> ws [N, num_ws, w_dim]``; :meth:`map` gives one w per z before broadcasting."""

    def __init__(self, z_dim: int, w_dim: int, num_ws: int, layer_dims: Sequence[int], lr_multiplier: float = 0.01,
                 style: str = "sg2", normalize: bool = True) -> None:
        super().__init__()
        if style not in STYLES:
            raise ValueError(f"mapping style {style!r}; allowed: {', '.join(STYLES)}")
        dims = [int(z_dim), *map(int, layer_dims)]
        if dims[-1] != w_dim:
            raise ValueError(f"the mapping network's last layer gives {dims[-1]} features, the synthesis wants {w_dim}")
        self.z_dim, self.w_dim, self.num_ws = int(z_dim), int(w_dim), int(num_ws)
        self.lr_multiplier, self.style, self.normalize = float(lr_multiplier), style, bool(normalize)
        self.num_layers = len(dims) - 1
        for i in range(self.num_layers):
            fc = torch.nn.Module()
            fc.weight = torch.nn.Parameter(torch.zeros(dims[i + 1], dims[i]), requires_grad=False)
            fc.bias = torch.nn.Parameter(torch.zeros(dims[i + 1]), requires_grad=False)
            self.add_module(f"fc{i}", fc)
        self.register_buffer("w_avg", torch.zeros(w_dim))

    def config(self) -> dict[str, Any]:
        return dict(z_dim=self.z_dim, w_dim=self.w_dim, num_ws=self.num_ws,
                    layer_dims=[int(getattr(self, f"fc{i}").weight.shape[0]) for i in range(self.num_layers)],
                    lr_multiplier=self.lr_multiplier, style=self.style, normalize=self.normalize)

    def map(self, z: torch.Tensor) -> torch.Tensor:
        """z [N, z_dim] -> w [N, w_dim] (float32)."""
        if z.ndim != 2 or z.shape[1] != self.z_dim:
            raise ValueError(f"z must have shape [N, {self.z_dim}], got {list(z.shape)}")
        x = z.float()
        if self.normalize:
            x = x * (x.square().mean(dim=1, keepdim=True) + 1e-8).rsqrt()
        for i in range(self.num_layers):
            fc = getattr(self, f"fc{i}")
            gain = self.lr_multiplier / math.sqrt(fc.weight.shape[1])
            if self.style == "sg2":
                x = F.leaky_relu(F.linear(x, fc.weight * gain, fc.bias * self.lr_multiplier), 0.2) * math.sqrt(2)
            else:
                x = F.leaky_relu(F.linear(x, fc.weight * (gain * math.sqrt(2)), fc.bias * self.lr_multiplier), 0.2)
        return x

    def truncate(self, ws: torch.Tensor, psi: float = 1.0, cutoff: int | None = None) -> torch.Tensor:
        """``w_avg + psi * (ws - w_avg)`` on the first ``cutoff`` layers (all when None) of ws [N, num_ws, w_dim]."""
        if psi == 1:
            return ws
        avg = self.w_avg.to(ws.device, ws.dtype)
        out = ws.clone()
        out[:, :cutoff] = avg.lerp(ws[:, :cutoff], psi)
        return out

    def forward(self, z: torch.Tensor, truncation_psi: float = 1.0, truncation_cutoff: int | None = None) -> torch.Tensor:
        ws = self.map(z).unsqueeze(1).repeat(1, self.num_ws, 1)
        return self.truncate(ws, truncation_psi, truncation_cutoff)

    def sample_z(self, n: int, generator: torch.Generator) -> torch.Tensor:
        return torch.randn(n, self.z_dim, generator=generator)


def _t(value: Any, source: str, key: str) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value.detach().float().cpu()
    if isinstance(value, np.ndarray) and value.dtype != object:
        return torch.from_numpy(np.array(value, dtype=np.float32))
    raise CheckpointError(f"{source}: mapping tensor {key} is {type(value).__name__}, not an array")


def _fill(net: MappingNetwork, weights: list[torch.Tensor], biases: list[torch.Tensor], w_avg: torch.Tensor | None,
          source: str) -> MappingNetwork:
    with torch.no_grad():
        for i, (w, b) in enumerate(zip(weights, biases)):
            fc = getattr(net, f"fc{i}")
            if tuple(w.shape) != tuple(fc.weight.shape) or tuple(b.shape) != tuple(fc.bias.shape):
                raise CheckpointError(f"{source}: mapping layer {i} has weight {list(w.shape)} / bias {list(b.shape)}, "
                                      f"expected {list(fc.weight.shape)} / {list(fc.bias.shape)}")
            fc.weight.copy_(w)
            fc.bias.copy_(b)
        if w_avg is not None:
            net.w_avg.copy_(w_avg.reshape(-1))
    return net.eval()


def _layers(keys: Mapping[str, Any], pattern: str) -> int:
    n = 0
    while pattern.format(n) in keys:
        n += 1
    return n


def mapping_from_nvlabs(obj: Any, num_ws: int, source: str) -> MappingNetwork:
    g = obj.get("G_ema") if isinstance(obj, dict) else None
    if not isinstance(g, PersistentObject):
        g = obj.get("G") if isinstance(obj, dict) else None
    if not isinstance(g, PersistentObject):
        raise CheckpointError(f"{source}: pickle does not hold a 'G_ema' network")
    m = g.submodules.get("mapping")
    if not isinstance(m, PersistentObject):
        raise CheckpointError(f"{source}: generator {g.class_name!r} has no mapping network")
    t = m.tensors()
    kw = {**{k: v for k, v in g.init_kwargs.items()}, **dict(g.init_kwargs.get("mapping_kwargs") or {}),
          **{k: v for k, v in m.init_kwargs.items()}}
    if int(kw.get("c_dim", 0) or 0) > 0 or any(k.startswith("embed.") for k in t):
        raise CheckpointError(f"{source}: the mapping network is conditional (c_dim {kw.get('c_dim')}); only "
                              "unconditional networks are supported")
    n = _layers(t, "fc{}.weight")
    if n == 0:
        raise CheckpointError(f"{source}: mapping network has no fc0.weight")
    weights = [_t(t[f"fc{i}.weight"], source, f"fc{i}.weight") for i in range(n)]
    biases = [_t(t[f"fc{i}.bias"], source, f"fc{i}.bias") for i in range(n)]
    if str(kw.get("activation", "lrelu")) != "lrelu":
        raise CheckpointError(f"{source}: mapping activation {kw.get('activation')!r} is not supported (lrelu)")
    net = MappingNetwork(z_dim=weights[0].shape[1], w_dim=weights[-1].shape[0], num_ws=num_ws,
                         layer_dims=[w.shape[0] for w in weights], lr_multiplier=float(kw.get("lr_multiplier", 0.01)),
                         style="sg2")
    w_avg = _t(t["w_avg"], source, "w_avg") if "w_avg" in t else None
    return _fill(net, weights, biases, w_avg, source)


def mapping_from_tf(obj: Any, num_ws: int, family: str, source: str) -> MappingNetwork:
    nets = [o for o in (obj if isinstance(obj, (tuple, list)) else (obj,)) if isinstance(o, TFNetwork)]
    if not nets:
        raise CheckpointError(f"{source}: pickle holds no dnnlib.tflib Network")
    gs = nets[-1]
    m = gs.components.get("mapping")
    if not isinstance(m, TFNetwork):
        raise CheckpointError(f"{source}: TF network {gs.name!r} has no 'mapping' component")
    from renderer.stylegan.loaders import _tf_params

    p = _tf_params(gs)
    v = {k[len("mapping/"):]: val for k, val in p.items() if k.startswith("mapping/")}
    if "LabelConcat/weight" in v:
        raise CheckpointError(f"{source}: the mapping network is conditional (LabelConcat); only unconditional "
                              "networks are supported")
    kw = m.static_kwargs
    n = _layers(v, "Dense{}/weight")
    if n == 0:
        raise CheckpointError(f"{source}: TF mapping network has no Dense0/weight")
    weights = [_t(v[f"Dense{i}/weight"], source, f"Dense{i}/weight").t().contiguous() for i in range(n)]
    biases = [_t(v[f"Dense{i}/bias"], source, f"Dense{i}/bias") for i in range(n)]
    act = str(kw.get("mapping_nonlinearity", "lrelu"))
    if act != "lrelu":
        raise CheckpointError(f"{source}: mapping nonlinearity {act!r} is not supported (lrelu)")
    if family == "stylegan1" and not kw.get("use_wscale", True):
        raise CheckpointError(f"{source}: StyleGAN mapping without use_wscale is not supported")
    net = MappingNetwork(z_dim=weights[0].shape[1], w_dim=weights[-1].shape[0], num_ws=num_ws,
                         layer_dims=[w.shape[0] for w in weights], lr_multiplier=float(kw.get("mapping_lrmul", 0.01)),
                         style="sg1" if family == "stylegan1" else "sg2",
                         normalize=bool(kw.get("normalize_latents", True)))
    avg = p.get("dlatent_avg")
    return _fill(net, weights, biases, _t(avg, source, "dlatent_avg") if avg is not None else None, source)


def mapping_from_rosinality(ckpt: Any, num_ws: int, source: str) -> MappingNetwork:
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("g_ema"), Mapping):
        raise CheckpointError(f"{source}: not a rosinality checkpoint (no 'g_ema' state dict)")
    g = ckpt["g_ema"]
    idx = sorted(int(k.split(".")[1]) for k in g if k.startswith("style.") and k.endswith(".weight"))
    if not idx:
        raise CheckpointError(f"{source}: rosinality g_ema has no style.<i>.weight (mapping) layers")
    weights = [_t(g[f"style.{i}.weight"], source, f"style.{i}.weight") for i in idx]
    biases = [_t(g[f"style.{i}.bias"], source, f"style.{i}.bias") for i in idx]
    args = ckpt.get("args")
    lr_mlp = float(getattr(args, "lr_mlp", 0.01) if args is not None else 0.01)
    net = MappingNetwork(z_dim=weights[0].shape[1], w_dim=weights[-1].shape[0], num_ws=num_ws,
                         layer_dims=[w.shape[0] for w in weights], lr_multiplier=lr_mlp, style="sg2")
    avg = ckpt.get("latent_avg")
    return _fill(net, weights, biases, _t(avg, source, "latent_avg") if avg is not None else None, source)


def _cache_path(path: Path, cache_dir: Path) -> Path:
    import hashlib

    tag = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:10]
    return cache_dir / f"{path.name}.{tag}.mapping.safetensors"


def load_mapping(path: str | os.PathLike, num_ws: int, family: str,
                 cache_dir: str | os.PathLike | None = None) -> MappingNetwork:
    """The mapping network of checkpoint ``path`` (any format the synthesis loaders read but our cache)."""
    from renderer.stylegan import loaders

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    st = path.stat()
    cache = _cache_path(path, Path(cache_dir)) if cache_dir is not None else None
    if cache is not None and cache.is_file():
        try:
            return _read_cache(cache, st, num_ws)
        except (OSError, ValueError, KeyError, CheckpointError) as exc:
            log.warning("ignoring stale or damaged mapping cache %s: %s", cache, exc)
    source = str(path)
    kind = loaders.sniff_format(path)
    if kind == "cache":
        raise CheckpointError(f"{path}: a synthesis-only .safetensors file has no mapping network; use the "
                              "original checkpoint")
    if kind == "zip":
        net = mapping_from_rosinality(loaders._load_torch_zip(path), num_ws, source)
    else:
        with open(path, "rb") as f:
            obj = load_nvlabs_pickle(f, source)
        if isinstance(obj, int):
            net = mapping_from_rosinality(loaders._load_torch_zip(path), num_ws, source)
        elif isinstance(obj, dict) and "g_ema" in obj:
            net = mapping_from_rosinality(obj, num_ws, source)
        elif isinstance(obj, dict):
            net = mapping_from_nvlabs(obj, num_ws, source)
        else:
            net = mapping_from_tf(obj, num_ws, family, source)
    if cache is not None:
        try:
            _write_cache(net, cache, st)
        except OSError as exc:
            log.warning("could not write mapping cache %s: %s", cache, exc)
    return net


def _write_cache(net: MappingNetwork, dest: Path, st: os.stat_result) -> None:
    from safetensors.torch import save as st_save

    from exhibits.files import atomic_write_bytes

    dest.parent.mkdir(parents=True, exist_ok=True)
    meta = {"cache_version": str(CACHE_VERSION), "config": json.dumps(net.config()),
            "source_size": str(st.st_size), "source_mtime_ns": str(st.st_mtime_ns)}
    tensors = {k: v.detach().contiguous().cpu() for k, v in net.state_dict().items()}
    atomic_write_bytes(dest, st_save(tensors, metadata=meta))


def _read_cache(path: Path, st: os.stat_result, num_ws: int) -> MappingNetwork:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        if (meta.get("cache_version") != str(CACHE_VERSION) or meta.get("source_size") != str(st.st_size)
                or meta.get("source_mtime_ns") != str(st.st_mtime_ns)):
            raise ValueError("cache does not match the checkpoint file")
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    cfg = json.loads(meta["config"])
    cfg["num_ws"] = num_ws
    net = MappingNetwork(**cfg)
    net.load_state_dict(tensors, strict=True)
    return net.eval()
