"""Tiny StyleGAN networks and writers for the official checkpoint formats, for the stylegan tests.

The writers produce the same structure as the real files:

* NVlabs (stylegan2-ada-pytorch / stylegan3) pickles: a dict ``{G, D, G_ema, augment_pipe,
  training_set_kwargs}`` whose networks reduce to ``torch_utils.persistence._reconstruct_persistent_obj(meta)``
  with ``meta = {type: 'class', version, module_src, class_name, state}``; tensors pickled by
  torch itself (``_rebuild_parameter`` / ``_rebuild_tensor_v2`` / ``torch.storage._load_from_bytes``).
* TF pickles: ``(G, D, Gs)`` of ``dnnlib.tflib.network.Network`` whose state holds
  ``variables`` as ``(name, numpy array)`` in TF layouts.
* rosinality ``.pt``: ``torch.save({'g_ema', 'latent_avg', 'args'})``.

Stand-in modules named ``torch_utils.persistence`` / ``dnnlib.tflib.network`` exist only
while pickling, so the pickles name the same globals as the real files.
"""
from __future__ import annotations

import argparse
import contextlib
import pickle
import sys
import types
from collections import OrderedDict
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from renderer.stylegan.sg1 import SG1Synthesis
from renderer.stylegan.sg2 import SG2Synthesis, sg2_channels
from renderer.stylegan.sg3 import SG3Synthesis

# What a real pickle carries as module_src: source code. Ours would leave a marker if it ever ran.
EVIL_SRC = "import pathlib\npathlib.Path({marker!r}).write_text('module_src was executed')\n"


# --------------------------------------------------------------------------- tiny networks


def _randomise(net: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Move every parameter away from its init (biases, noise strengths...), so a mis-mapping shows."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in net.named_parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g))
        for name, b in net.named_buffers():
            if name.endswith("magnitude_ema"):
                b.copy_(0.5 + torch.rand(b.shape, generator=g))
            elif name.endswith("w_avg"):
                b.copy_(torch.randn(b.shape, generator=g))
    return net.eval().requires_grad_(False)


def tiny_sg1(res: int = 16, w_dim: int = 16, seed: int = 1, fused_scale: Any = "auto") -> SG1Synthesis:
    torch.manual_seed(seed)
    channels = {r: 8 for r in (4, 8, 16, 32, 64, 128) if r <= res}
    return _randomise(SG1Synthesis(w_dim, res, 3, channels, fused_scale=fused_scale), seed)


def tiny_sg2(res: int = 16, w_dim: int = 16, seed: int = 2, num_fp16_res: int = 0) -> SG2Synthesis:
    torch.manual_seed(seed)
    return _randomise(SG2Synthesis(w_dim, res, 3, sg2_channels(res, 128, 16), num_fp16_res=num_fp16_res,
                                   conv_clamp=256 if num_fp16_res else None), seed)


def tiny_sg3(res: int = 16, w_dim: int = 16, seed: int = 3, radial: bool = False) -> SG3Synthesis:
    torch.manual_seed(seed)
    kw = dict(channel_base=256, channel_max=16, num_layers=4, num_critical=1, margin_size=2, num_fp16_res=1)
    if radial:
        kw.update(conv_kernel=1, use_radial_filters=True)
    return _randomise(SG3Synthesis(w_dim, res, 3, **kw), seed)


def ws_for(net: Any, n: int = 2, sigma: float = 1.0, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, net.num_ws, net.w_dim, generator=torch.Generator().manual_seed(seed)) * sigma


# --------------------------------------------------------------------------- stand-in modules


def _persistent_stub(meta: dict) -> None:
    raise RuntimeError("stand-in: never called")


class _TFNetworkStub:
    def __init__(self, state: dict) -> None:
        self._state = state

    def __getstate__(self) -> dict:
        return self._state


@contextlib.contextmanager
def official_globals() -> Iterator[None]:
    """Register ``torch_utils.persistence`` and ``dnnlib.tflib.network`` stand-ins while pickling."""
    mods = {name: types.ModuleType(name) for name in
            ("torch_utils", "torch_utils.persistence", "dnnlib", "dnnlib.tflib", "dnnlib.tflib.network")}
    _persistent_stub.__module__ = "torch_utils.persistence"
    _persistent_stub.__qualname__ = _persistent_stub.__name__ = "_reconstruct_persistent_obj"
    mods["torch_utils.persistence"]._reconstruct_persistent_obj = _persistent_stub
    _TFNetworkStub.__module__ = "dnnlib.tflib.network"
    _TFNetworkStub.__qualname__ = _TFNetworkStub.__name__ = "Network"
    mods["dnnlib.tflib.network"].Network = _TFNetworkStub
    saved = {k: sys.modules.get(k) for k in mods}
    sys.modules.update(mods)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v


# --------------------------------------------------------------------------- NVlabs pickles


class Persistent:
    """What a ``@persistent_class`` module pickles as."""

    def __init__(self, class_name: str, state: dict, module_src: str) -> None:
        self.class_name, self.state, self.module_src = class_name, state, module_src


class _NVPickler(pickle.Pickler):
    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, Persistent):
            meta = dict(type="class", version=4, module_src=obj.module_src, class_name=obj.class_name, state=obj.state)
            return _persistent_stub, (meta,)
        return NotImplemented


_NV_NAMES = {"SG2Synthesis": "SynthesisNetwork", "SG3Synthesis": "SynthesisNetwork",
             "FullyConnected": "FullyConnectedLayer"}


def _module_state(training: bool = False) -> dict:
    return {"training": training, "_parameters": OrderedDict(), "_buffers": OrderedDict(),
            "_non_persistent_buffers_set": set(), "_backward_hooks": OrderedDict(), "_forward_hooks": OrderedDict(),
            "_forward_pre_hooks": OrderedDict(), "_state_dict_hooks": OrderedDict(),
            "_load_state_dict_pre_hooks": OrderedDict(), "_modules": OrderedDict(), "_init_args": (),
            "_init_kwargs": {}}


def persistent_tree(module: torch.nn.Module, src: str, init_kwargs: dict | None = None, skip: tuple = ()) -> Persistent:
    state = _module_state()
    for name, p in module._parameters.items():
        state["_parameters"][name] = torch.nn.Parameter(p.detach().clone())
    for name, b in module._buffers.items():
        if name not in skip:
            state["_buffers"][name] = None if b is None else b.detach().clone()
    for name, child in module._modules.items():
        state["_modules"][name] = persistent_tree(child, src)
    state["_init_kwargs"] = dict(init_kwargs or {})
    for attr in ("in_channels", "out_channels", "resolution", "up", "use_fp16", "conv_clamp", "layer_names"):
        if hasattr(module, attr):
            state[attr] = getattr(module, attr)
    # StyleGAN3 keeps these as numpy pairs; the training loop deep-copies modules before
    # pickling, which turns the broadcast views into contiguous arrays.
    if hasattr(module, "in_size"):
        state["in_size"] = np.broadcast_to(np.asarray(module.in_size), [2]).copy()
        state["out_size"] = np.broadcast_to(np.asarray(module.out_size), [2]).copy()
        state["in_sampling_rate"] = np.float64(module.in_size)
    if hasattr(module, "sampling_rate") and hasattr(module, "size"):
        state["size"] = np.broadcast_to(np.asarray(module.size), [2]).copy()
        state["sampling_rate"] = np.float64(module.sampling_rate)
    name = _NV_NAMES.get(type(module).__name__, type(module).__name__)
    return Persistent(name, state, src)


def write_nvlabs_pkl(net: SG2Synthesis | SG3Synthesis, path: Path, marker: Path | None = None,
                     protocol: int = 3) -> Path:
    src = EVIL_SRC.format(marker=str(marker or path.with_suffix(".executed")))
    if isinstance(net, SG3Synthesis):
        syn_kwargs = dict(net.config(), magnitude_ema_beta=0.999)
    else:
        syn_kwargs = dict(w_dim=net.w_dim, img_resolution=net.img_resolution, img_channels=net.img_channels,
                          channel_base=128, channel_max=16, num_fp16_res=net.num_fp16_res,
                          conv_clamp=net.conv_clamp, architecture="skip")
    synthesis = persistent_tree(net, src, syn_kwargs, skip=("w_avg",))
    mapping = Persistent("MappingNetwork", _module_state(), src)
    mapping.state["_modules"]["fc0"] = persistent_tree(torch.nn.Linear(net.w_dim, net.w_dim), src)
    mapping.state["_buffers"]["w_avg"] = net.w_avg.detach().clone()
    gen = Persistent("Generator", _module_state(), src)
    gen.state["_modules"].update(synthesis=synthesis, mapping=mapping)
    gen.state["_init_kwargs"] = dict(z_dim=net.w_dim, c_dim=0, w_dim=net.w_dim, img_resolution=net.img_resolution,
                                     img_channels=net.img_channels, mapping_kwargs={"num_layers": 1},
                                     synthesis_kwargs={k: v for k, v in syn_kwargs.items()
                                                       if k not in ("w_dim", "img_resolution", "img_channels")})
    disc = persistent_tree(torch.nn.Conv2d(3, 4, 3), src)
    disc.class_name = "Discriminator"
    data = dict(G=gen, D=disc, G_ema=gen, augment_pipe=None,
                training_set_kwargs=dict(class_name="training.dataset.ImageFolderDataset", resolution=net.img_resolution))
    with official_globals(), open(path, "wb") as f:
        _NVPickler(f, protocol=protocol).dump(data)
    return path


# --------------------------------------------------------------------------- TF pickles


def _np(t: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(t.detach().cpu().numpy().astype(np.float32))


def sg1_tf_variables(net: SG1Synthesis) -> list[tuple[str, np.ndarray]]:
    """Our SG1 network as TF ``G_synthesis`` variables (TF layouts: conv [kh, kw, in, out], dense [in, out])."""
    v: list[tuple[str, np.ndarray]] = [("lod", np.float32(0.0))]
    v += [(f"noise{i}", _np(e.noise_const)[None, None]) for i, e in enumerate(net.epilogues)]

    def epi(i: int, scope: str) -> None:
        e = net.epilogues[i]
        v.extend([(f"{scope}/Noise/weight", _np(e.noise_weight)), (f"{scope}/bias", _np(e.bias)),
                  (f"{scope}/StyleMod/weight", _np(e.style_weight.t())), (f"{scope}/StyleMod/bias", _np(e.style_bias))])

    v.append(("4x4/Const/const", _np(net.const)[None]))
    epi(0, "4x4/Const")
    v.append(("4x4/Conv/weight", _np(net.convs[0].permute(2, 3, 1, 0))))
    epi(1, "4x4/Conv")
    for r in range(3, net.log2 + 1):
        s = 2 ** r
        v.append((f"{s}x{s}/Conv0_up/weight", _np(net.convs[2 * r - 5].permute(2, 3, 1, 0))))
        epi(2 * r - 4, f"{s}x{s}/Conv0_up")
        v.append((f"{s}x{s}/Conv1/weight", _np(net.convs[2 * r - 4].permute(2, 3, 1, 0))))
        epi(2 * r - 3, f"{s}x{s}/Conv1")
    for r in range(2, net.log2 + 1):
        lod = net.log2 - r
        v.append((f"ToRGB_lod{lod}/weight", _np(net.torgb_weight[r - 2].permute(2, 3, 1, 0))))
        v.append((f"ToRGB_lod{lod}/bias", _np(net.torgb_bias[r - 2])))
    return v


def sg2_tf_variables(net: SG2Synthesis) -> list[tuple[str, np.ndarray]]:
    """Our SG2 network as TF StyleGAN2 ``G_synthesis_stylegan2`` variables."""
    v: list[tuple[str, np.ndarray]] = [("4x4/Const/const", _np(net.b4.const)[None])]

    def layer(src: Any, scope: str, noise_idx: int | None, flip: bool = False) -> None:
        w = src.weight.flip(2, 3) if flip else src.weight
        v.extend([(f"{scope}/weight", _np(w.permute(2, 3, 1, 0))), (f"{scope}/bias", _np(src.bias)),
                  (f"{scope}/mod_weight", _np(src.affine.weight.t())), (f"{scope}/mod_bias", _np(src.affine.bias - 1))])
        if noise_idx is not None:
            v.append((f"{scope}/noise_strength", _np(src.noise_strength)))
            v.append((f"noise{noise_idx}", _np(src.noise_const)[None, None]))

    for res in net.block_resolutions:
        b = getattr(net, f"b{res}")
        log2 = int(np.log2(res))
        if res == 4:
            layer(b.conv1, "4x4/Conv", 0)
        else:
            layer(b.conv0, f"{res}x{res}/Conv0_up", 2 * log2 - 5, flip=True)
            layer(b.conv1, f"{res}x{res}/Conv1", 2 * log2 - 4)
        layer(b.torgb, f"{res}x{res}/ToRGB", None)
    return v


def _tf_net(name: str, variables: list, static_kwargs: dict, components: dict, src: str) -> _TFNetworkStub:
    return _TFNetworkStub(dict(version=4, name=name, static_kwargs=static_kwargs, components=components,
                               build_module_src=src, build_func_name=name, variables=variables))


def tf_synthesis_parts(net: SG1Synthesis | SG2Synthesis) -> tuple[list, str, dict]:
    """The TF synthesis network's variables, build function name and static kwargs for ``net``."""
    if isinstance(net, SG1Synthesis):
        return sg1_tf_variables(net), "G_synthesis", dict(
            dlatent_size=net.w_dim, num_channels=3, resolution=net.img_resolution,
            fused_scale=net.fused_scale, structure="auto")
    return sg2_tf_variables(net), "G_synthesis_stylegan2", dict(
        dlatent_size=net.w_dim, num_channels=3, resolution=net.img_resolution, architecture="skip")


def write_tf_pkl(net: SG1Synthesis | SG2Synthesis, path: Path, marker: Path | None = None,
                 scoped_names: bool = False) -> Path:
    """``scoped_names``: variable names carry the network scope (``G_synthesis/4x4/Const/const``)."""
    src = EVIL_SRC.format(marker=str(marker or path.with_suffix(".executed")))
    syn_vars, func, syn_kwargs = tf_synthesis_parts(net)
    if scoped_names:
        syn_vars = [(f"{func}/{name}", value) for name, value in syn_vars]
    mapping = _tf_net("G_mapping", [("Dense0/weight", np.ones((net.w_dim, net.w_dim), np.float32)),
                                    ("Dense0/bias", np.zeros(net.w_dim, np.float32))], {}, {}, src)
    synthesis = _tf_net(func, syn_vars, syn_kwargs, {}, src)
    gs = _tf_net("G", [("dlatent_avg", _np(net.w_avg))], dict(truncation_psi=0.7),
                 dict(mapping=mapping, synthesis=synthesis), src)
    d = _tf_net("D", [("4x4/Dense0/weight", np.ones((4, 4), np.float32))], {}, {}, src)
    with official_globals(), open(path, "wb") as f:
        pickle.dump((gs, d, gs), f, protocol=4)
    return path


# --------------------------------------------------------------------------- rosinality .pt


def rosinality_state(net: SG2Synthesis) -> dict[str, torch.Tensor]:
    """Our SG2 network in rosinality/stylegan2-pytorch's ``Generator`` naming (plus a mapping net)."""
    sd: dict[str, torch.Tensor] = {"input.input": net.b4.const[None].clone()}
    for i in range(1, 3):
        sd[f"style.{i}.weight"] = torch.randn(net.w_dim, net.w_dim)
        sd[f"style.{i}.bias"] = torch.zeros(net.w_dim)

    def conv(dst: str, src: Any, noise: str) -> None:
        sd[f"{dst}.conv.weight"] = src.weight[None].clone()
        sd[f"{dst}.conv.modulation.weight"] = src.affine.weight.clone()
        sd[f"{dst}.conv.modulation.bias"] = src.affine.bias.clone()
        sd[f"{dst}.noise.weight"] = src.noise_strength.reshape(1).clone()
        sd[f"{dst}.activate.bias"] = src.bias.clone()
        sd[f"noises.{noise}"] = src.noise_const[None, None].clone()

    def torgb(dst: str, src: Any) -> None:
        sd[f"{dst}.conv.weight"] = src.weight[None].clone()
        sd[f"{dst}.conv.modulation.weight"] = src.affine.weight.clone()
        sd[f"{dst}.conv.modulation.bias"] = src.affine.bias.clone()
        sd[f"{dst}.bias"] = src.bias.reshape(1, -1, 1, 1).clone()

    conv("conv1", net.b4.conv1, "noise_0")
    torgb("to_rgb1", net.b4.torgb)
    for i, res in enumerate(net.block_resolutions[1:]):
        b = getattr(net, f"b{res}")
        conv(f"convs.{2 * i}", b.conv0, f"noise_{2 * i + 1}")
        sd[f"convs.{2 * i}.conv.blur.kernel"] = torch.ones(4, 4)
        conv(f"convs.{2 * i + 1}", b.conv1, f"noise_{2 * i + 2}")
        torgb(f"to_rgbs.{i}", b.torgb)
        sd[f"to_rgbs.{i}.upsample.kernel"] = torch.ones(4, 4)
    return sd


def write_rosinality_pt(net: SG2Synthesis, path: Path) -> Path:
    torch.save({"g_ema": rosinality_state(net), "latent_avg": net.w_avg.clone(),
                "args": argparse.Namespace(size=net.img_resolution, channel_multiplier=2)}, path)
    return path


STYLEGAN_EXHIBIT_TOML = """title = "{title}"
series = "{series}"
[canvas]
width = {size}
height = {size}
[generator]
name = "stylegan"
checkpoint = "{checkpoint}"
[sigma]
min = {lo}
max = {hi}
"""


def stylegan_exhibit_toml(checkpoint: Path, size: int, sigma: tuple[float, float], *, title: str,
                          series: str) -> str:
    """An exhibit file that runs the ``stylegan`` generator on ``checkpoint`` (any supported format)."""
    return STYLEGAN_EXHIBIT_TOML.format(title=title, series=series, size=size, checkpoint=Path(checkpoint).as_posix(),
                                        lo=sigma[0], hi=sigma[1])
