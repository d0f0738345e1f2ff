"""Tiny StyleGAN checkpoints with a real mapping network, in the NVlabs, TensorFlow and rosinality formats.

The mapping tensors come from a seeded generator (``mapping_tensors``), so the same
numbers can be fed to the official code; ``stylegan_mapping_reference.json`` holds
what stylegan2-ada-pytorch's ``training.networks.MappingNetwork`` computed from them.
"""
from __future__ import annotations

import argparse
import json
import pickle
from pathlib import Path

import torch

from tests.stylegan_helpers import (EVIL_SRC, Persistent, _module_state, _NVPickler, _np, _tf_net, official_globals,
                                    persistent_tree, rosinality_state, tf_synthesis_parts)

REFERENCE = Path(__file__).with_name("stylegan_mapping_reference.json")
Z_DIM = W_DIM = 16
LAYERS = 3


def mapping_tensors(seed: int = 7, z_dim: int = Z_DIM, w_dim: int = W_DIM, layers: int = LAYERS) -> dict:
    """``fc{i}.weight [out, in]``, ``fc{i}.bias``, ``w_avg``: trained-like magnitudes (weights ~ N(0, 1/lrmul))."""
    g = torch.Generator().manual_seed(seed)
    dims = [z_dim] + [w_dim] * layers
    t = {}
    for i in range(layers):
        t[f"fc{i}.weight"] = torch.randn(dims[i + 1], dims[i], generator=g) * 100.0
        t[f"fc{i}.bias"] = torch.randn(dims[i + 1], generator=g) * 10.0
    t["w_avg"] = torch.randn(w_dim, generator=g)
    return t


def reference() -> dict:
    return json.loads(REFERENCE.read_text())


def _mapping_persistent(t: dict, num_ws: int, src: str) -> Persistent:
    m = Persistent("MappingNetwork", _module_state(), src)
    n = sum(1 for k in t if k.endswith(".weight"))
    for i in range(n):
        fc = Persistent("FullyConnectedLayer", _module_state(), src)
        fc.state["_parameters"]["weight"] = torch.nn.Parameter(t[f"fc{i}.weight"].clone())
        fc.state["_parameters"]["bias"] = torch.nn.Parameter(t[f"fc{i}.bias"].clone())
        fc.state["_init_kwargs"] = dict(in_features=t[f"fc{i}.weight"].shape[1],
                                        out_features=t[f"fc{i}.weight"].shape[0], activation="lrelu",
                                        lr_multiplier=0.01)
        m.state["_modules"][f"fc{i}"] = fc
    m.state["_buffers"]["w_avg"] = t["w_avg"].clone()
    m.state["_init_kwargs"] = dict(z_dim=t["fc0.weight"].shape[1], c_dim=0, w_dim=t["w_avg"].shape[0],
                                   num_ws=num_ws, num_layers=n)
    return m


def write_nvlabs_with_mapping(net, t: dict, path: Path, c_dim: int = 0) -> Path:
    from renderer.stylegan.sg3 import SG3Synthesis

    src = EVIL_SRC.format(marker=str(path.with_suffix(".executed")))
    if isinstance(net, SG3Synthesis):
        syn_kwargs = dict(net.config(), magnitude_ema_beta=0.999)
    else:
        syn_kwargs = dict(w_dim=net.w_dim, img_resolution=net.img_resolution, img_channels=net.img_channels,
                          channel_base=128, channel_max=16, num_fp16_res=net.num_fp16_res,
                          conv_clamp=net.conv_clamp, architecture="skip")
    gen = Persistent("Generator", _module_state(), src)
    mapping = _mapping_persistent(t, net.num_ws, src)
    mapping.state["_init_kwargs"]["c_dim"] = c_dim
    gen.state["_modules"].update(synthesis=persistent_tree(net, src, syn_kwargs, skip=("w_avg",)), mapping=mapping)
    gen.state["_init_kwargs"] = dict(z_dim=t["fc0.weight"].shape[1], c_dim=c_dim, w_dim=net.w_dim,
                                     img_resolution=net.img_resolution, img_channels=net.img_channels,
                                     mapping_kwargs={"num_layers": mapping.state["_init_kwargs"]["num_layers"]})
    data = dict(G=gen, D=None, G_ema=gen, augment_pipe=None, training_set_kwargs={})
    with official_globals(), open(path, "wb") as f:
        _NVPickler(f, protocol=3).dump(data)
    return path


def write_tf_with_mapping(net, t: dict, path: Path) -> Path:
    src = EVIL_SRC.format(marker=str(path.with_suffix(".executed")))
    n = sum(1 for k in t if k.endswith(".weight"))
    syn_vars, func, syn_kwargs = tf_synthesis_parts(net)
    map_vars = []
    for i in range(n):
        map_vars.append((f"G_mapping/Dense{i}/weight", _np(t[f"fc{i}.weight"].t())))  # TF dense layout [in, out]
        map_vars.append((f"G_mapping/Dense{i}/bias", _np(t[f"fc{i}.bias"])))
    mapping = _tf_net("G_mapping", map_vars, dict(latent_size=t["fc0.weight"].shape[1], dlatent_size=net.w_dim,
                                                   mapping_layers=n, mapping_lrmul=0.01,
                                                   dlatent_broadcast=net.num_ws), {}, src)
    synthesis = _tf_net(func, syn_vars, syn_kwargs, {}, src)
    gs = _tf_net("G", [("dlatent_avg", _np(t["w_avg"]))], dict(truncation_psi=0.7),
                 dict(mapping=mapping, synthesis=synthesis), src)
    with official_globals(), open(path, "wb") as f:
        pickle.dump((gs, gs, gs), f, protocol=4)
    return path


def write_rosinality_with_mapping(net, t: dict, path: Path) -> Path:
    sd = {k: v for k, v in rosinality_state(net).items() if not k.startswith("style.")}
    n = sum(1 for k in t if k.endswith(".weight"))
    for i in range(n):  # Sequential(PixelNorm, EqualLinear x n): the linears are style.1 .. style.n
        sd[f"style.{i + 1}.weight"] = t[f"fc{i}.weight"].clone()
        sd[f"style.{i + 1}.bias"] = t[f"fc{i}.bias"].clone()
    torch.save({"g_ema": sd, "latent_avg": t["w_avg"].clone(),
                "args": argparse.Namespace(size=net.img_resolution, channel_multiplier=2, n_mlp=n, lr_mlp=0.01)}, path)
    return path


__all__ = ["mapping_tensors", "reference", "write_nvlabs_with_mapping", "write_tf_with_mapping",
           "write_rosinality_with_mapping"]
