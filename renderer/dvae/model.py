"""DALL-E's discrete VAE (our own modules) and a restricted reader for the released ``decoder.pkl`` / ``encoder.pkl``.

The released files are whole ``torch.save``d modules of openai/DALL-E's ``dall_e``
package: pickles naming ``dall_e.decoder.Decoder``, ``dall_e.decoder.DecoderBlock``,
``dall_e.encoder.Encoder``, ``dall_e.encoder.EncoderBlock``, ``dall_e.utils.Conv2d``
and torch's ``Sequential`` / ``ReLU`` / ``Upsample`` / ``MaxPool2d`` / ``Identity``,
each rebuilt with ``NEWOBJ`` + ``BUILD`` from its ``__dict__`` (the attrs fields such
as ``n_hid``, ``vocab_size``, ``n_blk_per_group``, plus ``_parameters`` and
``_modules``).  :func:`read_pickled_module` unpickles them through an allowlist
into inert :class:`PickledModule` placeholders (class name + state; no code of
the package exists here, none runs), and :func:`load_decoder` / :func:`load_encoder`
check the tree's classes, read the attrs fields and copy every parameter by its
dotted name into :class:`Decoder` / :class:`Encoder`.  Any global outside the
allowlist is refused with the file and the global named.

Our modules keep the package's names (``blocks.input.w``,
``blocks.group_1.block_1.res_path.conv_2.b`` ...) and its arithmetic: 1x1/3x3
convolutions with padding ``(kw - 1) // 2``, residual blocks
``id_path(x) + (1 / n_layers**2) * res_path(x)``, nearest 2x upsampling (decoder)
and 2x2 max pooling (encoder), and the logit-Laplace pixel mapping with eps 0.1.
"""
from __future__ import annotations

import collections
import logging
import math
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from renderer.checkpoint_io import CheckpointError, restricted_torch_load, strict_copy
from renderer.stylegan.unpickle import PersistentObject

log = logging.getLogger(__name__)

LOGIT_LAPLACE_EPS = 0.1
GROUP_COUNT = 4


def map_pixels(x: torch.Tensor) -> torch.Tensor:
    return (1 - 2 * LOGIT_LAPLACE_EPS) * x + LOGIT_LAPLACE_EPS


def unmap_pixels(x: torch.Tensor) -> torch.Tensor:
    return torch.clamp((x - LOGIT_LAPLACE_EPS) / (1 - 2 * LOGIT_LAPLACE_EPS), 0, 1)


class Conv(nn.Module):
    """``dall_e.utils.Conv2d``: parameters ``w`` (out, in, kw, kw) and ``b``, 'same' padding."""

    def __init__(self, n_in: int, n_out: int, kw: int):
        super().__init__()
        self.w = nn.Parameter(torch.empty(n_out, n_in, kw, kw).normal_(std=1 / math.sqrt(n_in * kw * kw)))
        self.b = nn.Parameter(torch.zeros(n_out))
        self.pad = (kw - 1) // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.w, self.b, padding=self.pad)


class Block(nn.Module):
    def __init__(self, n_in: int, n_out: int, n_layers: int, kernels: tuple[int, int, int, int]):
        super().__init__()
        hid = n_out // 4
        self.post_gain = 1 / n_layers ** 2
        self.id_path = Conv(n_in, n_out, 1) if n_in != n_out else nn.Identity()
        chans = (n_in, hid, hid, hid, n_out)
        self.res_path = nn.Sequential(OrderedDict(
            (f"conv_{i + 1}", Conv(chans[i], chans[i + 1], kernels[i])) for i in range(4)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x
        for conv in self.res_path:
            h = conv(F.relu(h))
        return self.id_path(x) + self.post_gain * h


def _stack(first: Conv, ins: tuple[int, ...], outs: tuple[int, ...], n_blk: int, kernels: tuple[int, int, int, int],
           resample: tuple[str, Any], last: Conv) -> nn.Sequential:
    """``input``, four groups of residual blocks (a resampling layer after the first three), ``output``."""
    n_layers = GROUP_COUNT * n_blk
    groups: list[tuple[str, nn.Module]] = [("input", first)]
    for g in range(GROUP_COUNT):
        blocks: OrderedDict[str, nn.Module] = OrderedDict(
            (f"block_{i + 1}", Block(ins[g] if i == 0 else outs[g], outs[g], n_layers, kernels)) for i in range(n_blk))
        if g < GROUP_COUNT - 1:
            blocks[resample[0]] = resample[1]()
        groups.append((f"group_{g + 1}", nn.Sequential(blocks)))
    groups.append(("output", nn.Sequential(OrderedDict([("relu", nn.ReLU()), ("conv", last)]))))
    return nn.Sequential(OrderedDict(groups))


@dataclass(frozen=True)
class DecoderConfig:
    n_init: int = 128
    n_hid: int = 256
    n_blk_per_group: int = 2
    output_channels: int = 3
    vocab_size: int = 8192


@dataclass(frozen=True)
class EncoderConfig:
    n_hid: int = 256
    n_blk_per_group: int = 2
    input_channels: int = 3
    vocab_size: int = 8192


class Decoder(nn.Module):
    """Token probabilities (N, vocab, h, w) -> pixel statistics (N, 2 * channels, 8h, 8w)."""

    factor = 8

    def __init__(self, cfg: DecoderConfig):
        super().__init__()
        self.cfg = cfg
        h = cfg.n_hid
        self.blocks = _stack(Conv(cfg.vocab_size, cfg.n_init, 1), (cfg.n_init, 8 * h, 4 * h, 2 * h),
                             (8 * h, 4 * h, 2 * h, h), cfg.n_blk_per_group, (1, 3, 3, 3),
                             ("upsample", lambda: nn.Upsample(scale_factor=2, mode="nearest")),
                             Conv(h, 2 * cfg.output_channels, 1))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if z.ndim != 4 or z.shape[1] != self.cfg.vocab_size:
            raise ValueError(f"decoder input must be (N, {self.cfg.vocab_size}, h, w), got {list(z.shape)}")
        return self.blocks(z)

    def pixels(self, z: torch.Tensor) -> torch.Tensor:
        """Token probabilities -> RGB in [0, 1] (the mean of the logit-Laplace distribution, unmapped)."""
        stats = self(z).float()
        return unmap_pixels(torch.sigmoid(stats[:, :3]))


class Encoder(nn.Module):
    """Pixels mapped by :func:`map_pixels` (N, 3, H, W) -> token logits (N, vocab, H/8, W/8)."""

    factor = 8

    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.cfg = cfg
        h = cfg.n_hid
        self.blocks = _stack(Conv(cfg.input_channels, h, 7), (h, h, 2 * h, 4 * h), (h, 2 * h, 4 * h, 8 * h),
                             cfg.n_blk_per_group, (3, 3, 3, 1), ("pool", lambda: nn.MaxPool2d(kernel_size=2)),
                             Conv(8 * h, cfg.vocab_size, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != self.cfg.input_channels:
            raise ValueError(f"encoder input must be (N, {self.cfg.input_channels}, H, W), got {list(x.shape)}")
        return self.blocks(x)


# --------------------------------------------------------------------------- the restricted reader


class PickledModule(PersistentObject):
    """An inert stand-in for a pickled module of the ``dall_e`` package or torch: class name and state only.

    Built by the pickle's ``NEWOBJ`` + ``BUILD``; the state's ``_parameters`` / ``_buffers`` /
    ``_modules`` are read as the StyleGAN loader reads NVlabs' persistent objects.
    """

    qualname = "?"

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, dict):
            raise CheckpointError(f"pickled {self.qualname} has a {type(state).__name__} state, expected a dict")
        self.class_name = self.qualname
        self.state = state

    def __reduce__(self) -> Any:
        raise TypeError("placeholders read from a checkpoint cannot be pickled again")

    def walk(self, path: str = "") -> list[tuple[str, str]]:
        """(dotted path, class) of this module ("" for the top) and every submodule."""
        out = [(path, self.qualname)]
        for name, sub in self.submodules.items():
            sub_path = f"{path}.{name}" if path else name
            if not isinstance(sub, PickledModule):
                raise CheckpointError(f"submodule {sub_path} is a {type(sub).__name__}, not a module")
            out.extend(sub.walk(sub_path))
        return out


MODULE_CLASSES = (
    ("dall_e.decoder", "Decoder"), ("dall_e.decoder", "DecoderBlock"), ("dall_e.encoder", "Encoder"),
    ("dall_e.encoder", "EncoderBlock"), ("dall_e.utils", "Conv2d"),
    ("torch.nn.modules.container", "Sequential"), ("torch.nn.modules.activation", "ReLU"),
    ("torch.nn.modules.upsampling", "Upsample"), ("torch.nn.modules.pooling", "MaxPool2d"),
    ("torch.nn.modules.linear", "Identity"),
)


def _rebuild_parameter(data: Any, requires_grad: Any = False, backward_hooks: Any = None, *rest: Any) -> torch.Tensor:
    if not isinstance(data, torch.Tensor):
        raise CheckpointError(f"a parameter rebuilt over a {type(data).__name__}, expected a tensor")
    return data


def _rebuild_tensor_v2(storage: Any, offset: Any, size: Any, stride: Any, *rest: Any) -> torch.Tensor:
    from torch._utils import _rebuild_tensor_v2 as rebuild

    if not isinstance(storage, torch.storage.TypedStorage):
        raise CheckpointError(f"a tensor rebuilt over a {type(storage).__name__}, expected a storage")
    if not (isinstance(offset, int) and isinstance(size, tuple) and isinstance(stride, tuple)):
        raise CheckpointError("a tensor with malformed offset, size or stride")
    return rebuild(storage, offset, size, stride, False, collections.OrderedDict())


def allowlist() -> dict[tuple[str, str], Any]:
    allowed: dict[tuple[str, str], Any] = {
        key: type(key[1], (PickledModule,), {"qualname": f"{key[0]}.{key[1]}"}) for key in MODULE_CLASSES}
    allowed.update({
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("builtins", "set"): set, ("__builtin__", "set"): set,
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
        ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
        ("torch", "device"): torch.device,
    })
    return allowed


def read_pickled_module(path: str | Path, what: str) -> PickledModule:
    obj = restricted_torch_load(path, allowlist(), what)
    if not isinstance(obj, PickledModule):
        raise CheckpointError(f"{path}: not a {what}: the pickle holds a {type(obj).__name__}")
    return obj


def _int_field(top: PickledModule, key: str, source: str, minimum: int = 1) -> int:
    v = top.state.get(key)
    if not isinstance(v, int) or isinstance(v, bool) or v < minimum:
        raise CheckpointError(f"{source}: the pickled {top.qualname} has {key} = {v!r}, expected an integer >= {minimum}")
    return v


def _check_tree(top: PickledModule, ours: nn.Module, source: str) -> None:
    """The pickled tree has the package's class at every path our module has."""
    expected = {"Conv": "dall_e.utils.Conv2d", "Sequential": "torch.nn.modules.container.Sequential",
                "Identity": "torch.nn.modules.linear.Identity", "ReLU": "torch.nn.modules.activation.ReLU",
                "Upsample": "torch.nn.modules.upsampling.Upsample", "MaxPool2d": "torch.nn.modules.pooling.MaxPool2d"}
    pickled = dict(top.walk())
    for name, module in ours.named_modules():
        if not name:
            continue
        want = expected.get(type(module).__name__)
        if want is None:  # our Block: DecoderBlock / EncoderBlock
            want = top.qualname + "Block"
        got = pickled.get(name)
        if got != want:
            raise CheckpointError(f"{source}: module {name} is {got or 'missing'}, expected {want}")
    for name, module in ours.named_modules():
        if isinstance(module, nn.Upsample):
            st = top_state(top, name)
            if st.get("mode") != "nearest" or float(st.get("scale_factor") or 0) != 2.0:
                raise CheckpointError(f"{source}: {name} upsamples with {st.get('mode')!r} x{st.get('scale_factor')}, "
                                      "expected nearest x2")


def top_state(top: PickledModule, dotted: str) -> Mapping[str, Any]:
    node = top
    for part in dotted.split("."):
        node = node.submodules[part]
    return node.state


def load_decoder(path: str | Path) -> Decoder:
    """Our :class:`Decoder` from the released ``decoder.pkl`` (restricted unpickler; nothing executed)."""
    path = Path(path)
    top = read_pickled_module(path, "DALL-E dVAE decoder.pkl")
    if top.qualname != "dall_e.decoder.Decoder":
        raise CheckpointError(f"{path}: holds a pickled {top.qualname}, expected dall_e.decoder.Decoder "
                              "(is this encoder.pkl?)")
    src = str(path)
    cfg = DecoderConfig(n_init=_int_field(top, "n_init", src), n_hid=_int_field(top, "n_hid", src, 4),
                        n_blk_per_group=_int_field(top, "n_blk_per_group", src),
                        output_channels=_int_field(top, "output_channels", src),
                        vocab_size=_int_field(top, "vocab_size", src))
    if top.state.get("group_count", GROUP_COUNT) != GROUP_COUNT:
        raise CheckpointError(f"{path}: group_count {top.state.get('group_count')!r}; the released model has 4")
    model = Decoder(cfg)
    _check_tree(top, model, src)
    strict_copy(model, top.tensors(), src, "DALL-E dVAE decoder")
    return model.eval().requires_grad_(False)


def load_encoder(path: str | Path) -> Encoder:
    """Our :class:`Encoder` from the released ``encoder.pkl``."""
    path = Path(path)
    top = read_pickled_module(path, "DALL-E dVAE encoder.pkl")
    if top.qualname != "dall_e.encoder.Encoder":
        raise CheckpointError(f"{path}: holds a pickled {top.qualname}, expected dall_e.encoder.Encoder "
                              "(is this decoder.pkl?)")
    src = str(path)
    cfg = EncoderConfig(n_hid=_int_field(top, "n_hid", src, 4), n_blk_per_group=_int_field(top, "n_blk_per_group", src),
                        input_channels=_int_field(top, "input_channels", src),
                        vocab_size=_int_field(top, "vocab_size", src))
    if top.state.get("group_count", GROUP_COUNT) != GROUP_COUNT:
        raise CheckpointError(f"{path}: group_count {top.state.get('group_count')!r}; the released model has 4")
    model = Encoder(cfg)
    _check_tree(top, model, src)
    strict_copy(model, top.tensors(), src, "DALL-E dVAE encoder")
    return model.eval().requires_grad_(False)


def tiny_decoder_config() -> DecoderConfig:
    return DecoderConfig(n_init=16, n_hid=16, n_blk_per_group=1, output_channels=3, vocab_size=64)


def tiny_encoder_config() -> EncoderConfig:
    return EncoderConfig(n_hid=16, n_blk_per_group=1, input_channels=3, vocab_size=64)


def random_decoder(cfg: DecoderConfig, seed: int = 0) -> Decoder:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Decoder(cfg)
        for m in model.modules():
            if isinstance(m, Conv):
                m.b.data.normal_(0, 0.3)
    return model.eval().requires_grad_(False)


def random_encoder(cfg: EncoderConfig, seed: int = 1) -> Encoder:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Encoder(cfg)
    return model.eval().requires_grad_(False)


def activation_bytes(cfg: DecoderConfig, width: int, height: int, act_bytes: int = 4) -> int:
    """What one forward+backward through the decoder keeps, plus the logits, Gumbel noise and softmax."""
    latent = width * height / 64
    h = cfg.n_hid
    ins = (cfg.n_init, 8 * h, 4 * h, 2 * h)
    outs = (8 * h, 4 * h, 2 * h, h)
    total = 5 * cfg.vocab_size * latent
    for g in range(GROUP_COUNT):
        pixels = latent * 4 ** g
        for i in range(cfg.n_blk_per_group):
            n_in = ins[g] if i == 0 else outs[g]
            total += pixels * (2 * n_in + 6 * (outs[g] // 4) + 2 * outs[g])
        total += pixels * 4 * outs[g] if g < GROUP_COUNT - 1 else 0  # the upsampled copy
    total += 6 * width * height * (h + 2 * cfg.output_channels)
    return int(total * act_bytes)
