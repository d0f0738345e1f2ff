"""Tiny random DALL-E dVAE ``decoder.pkl`` / ``encoder.pkl`` written the way the release was, and a reference.

Where each format fact comes from (openai/DALL-E, read, not copied):

* ``dall_e/__init__.py``: ``load_model`` is a bare ``torch.load`` of the file, so the release is a
  whole pickled module (``torch.save(decoder)``).
* ``dall_e/decoder.py``: ``@attr.s`` class ``Decoder(nn.Module)`` with fields ``group_count`` (4),
  ``n_init``, ``n_hid``, ``n_blk_per_group``, ``output_channels``, ``vocab_size``, ``device``,
  ``requires_grad``, ``use_mixed_precision``; ``self.blocks`` is a ``Sequential`` of ``input``
  (1x1 ``Conv2d`` vocab -> n_init), ``group_1..group_4`` (``block_1..`` ``DecoderBlock`` s, an
  ``upsample`` ``nn.Upsample(scale_factor=2, mode='nearest')`` after groups 1-3; widths 8h, 4h, 2h,
  h) and ``output`` (``relu``, 1x1 ``conv`` to 2 * output_channels).  ``DecoderBlock`` (fields
  ``n_in``, ``n_out``, ``n_layers``, ``device``, ``requires_grad``; ``n_hid = n_out // 4``,
  ``post_gain = 1 / n_layers**2``) has ``id_path`` (1x1 conv, or ``nn.Identity`` when n_in == n_out)
  and ``res_path`` = ``relu_1, conv_1 (1x1), relu_2, conv_2 (3x3), relu_3, conv_3 (3x3), relu_4,
  conv_4 (3x3)``.
* ``dall_e/encoder.py``: ``Encoder`` likewise with ``input`` (7x7 conv 3 -> h), groups of
  ``EncoderBlock`` (kernels 3, 3, 3, 1) with ``pool`` ``nn.MaxPool2d(kernel_size=2)`` after groups
  1-3 (widths h, 2h, 4h, 8h) and ``output`` (``relu``, 1x1 ``conv`` to vocab).
* ``dall_e/utils.py``: ``Conv2d`` fields ``n_in``, ``n_out``, ``kw``, ``use_float16``, ``device``,
  ``requires_grad``; parameters ``w`` (n_out, n_in, kw, kw) and ``b``; ``F.conv2d(x, w, b,
  padding=(kw - 1) // 2)``; ``map_pixels`` / ``unmap_pixels`` with ``logit_laplace_eps = 0.1``.

Stand-in classes living at those module paths are pickled by ``torch.save`` exactly as the package's
would be (``NEWOBJ`` + ``BUILD`` of the module ``__dict__``), then removed from ``sys.modules``.
"""
from __future__ import annotations

import math
import sys
import types
import warnings
from collections import OrderedDict
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn


def _make_classes() -> dict[str, type]:
    class Conv2d(nn.Module):
        def __init__(self, n_in, n_out, kw, use_float16=True, g=None):
            super().__init__()
            self.n_in, self.n_out, self.kw = n_in, n_out, kw
            self.use_float16, self.device, self.requires_grad = use_float16, torch.device("cpu"), False
            self.w = nn.Parameter(torch.randn(n_out, n_in, kw, kw, generator=g) / math.sqrt(n_in * kw * kw),
                                  requires_grad=False)
            self.b = nn.Parameter(torch.randn(n_out, generator=g) * 0.3, requires_grad=False)

    def block(kind: str, kernels):
        class Block(nn.Module):
            def __init__(self, n_in, n_out, n_layers, g=None):
                super().__init__()
                self.n_in, self.n_out, self.n_layers = n_in, n_out, n_layers
                self.device, self.requires_grad = None, False
                self.n_hid = n_out // 4
                self.post_gain = 1 / n_layers ** 2
                self.id_path = Conv2d(n_in, n_out, 1, g=g) if n_in != n_out else nn.Identity()
                chans = (n_in, self.n_hid, self.n_hid, self.n_hid, n_out)
                layers = []
                for i in range(4):
                    layers += [(f"relu_{i + 1}", nn.ReLU()), (f"conv_{i + 1}", Conv2d(chans[i], chans[i + 1], kernels[i], g=g))]
                self.res_path = nn.Sequential(OrderedDict(layers))
        Block.__name__ = Block.__qualname__ = kind
        return Block

    DecoderBlock = block("DecoderBlock", (1, 3, 3, 3))
    EncoderBlock = block("EncoderBlock", (3, 3, 3, 1))

    class Decoder(nn.Module):
        def __init__(self, n_init, n_hid, n_blk_per_group, vocab_size, output_channels=3, seed=0):
            super().__init__()
            g = torch.Generator().manual_seed(seed)
            self.group_count, self.n_init, self.n_hid = 4, n_init, n_hid
            self.n_blk_per_group, self.output_channels, self.vocab_size = n_blk_per_group, output_channels, vocab_size
            self.device, self.requires_grad, self.use_mixed_precision = torch.device("cpu"), False, True
            n_layers = 4 * n_blk_per_group
            h = n_hid
            ins, outs = (n_init, 8 * h, 4 * h, 2 * h), (8 * h, 4 * h, 2 * h, h)
            groups = [("input", Conv2d(vocab_size, n_init, 1, use_float16=False, g=g))]
            for k in range(4):
                items = [(f"block_{i + 1}", DecoderBlock(ins[k] if i == 0 else outs[k], outs[k], n_layers, g=g))
                         for i in range(n_blk_per_group)]
                if k < 3:
                    items.append(("upsample", nn.Upsample(scale_factor=2, mode="nearest")))
                groups.append((f"group_{k + 1}", nn.Sequential(OrderedDict(items))))
            groups.append(("output", nn.Sequential(OrderedDict([("relu", nn.ReLU()),
                                                                ("conv", Conv2d(h, 2 * output_channels, 1, g=g))]))))
            self.blocks = nn.Sequential(OrderedDict(groups))

    class Encoder(nn.Module):
        def __init__(self, n_hid, n_blk_per_group, vocab_size, input_channels=3, seed=0):
            super().__init__()
            g = torch.Generator().manual_seed(seed)
            self.group_count, self.n_hid, self.n_blk_per_group = 4, n_hid, n_blk_per_group
            self.input_channels, self.vocab_size = input_channels, vocab_size
            self.device, self.requires_grad, self.use_mixed_precision = torch.device("cpu"), False, True
            n_layers = 4 * n_blk_per_group
            h = n_hid
            ins, outs = (h, h, 2 * h, 4 * h), (h, 2 * h, 4 * h, 8 * h)
            groups = [("input", Conv2d(input_channels, h, 7, g=g))]
            for k in range(4):
                items = [(f"block_{i + 1}", EncoderBlock(ins[k] if i == 0 else outs[k], outs[k], n_layers, g=g))
                         for i in range(n_blk_per_group)]
                if k < 3:
                    items.append(("pool", nn.MaxPool2d(kernel_size=2)))
                groups.append((f"group_{k + 1}", nn.Sequential(OrderedDict(items))))
            groups.append(("output", nn.Sequential(OrderedDict([("relu", nn.ReLU()),
                                                                ("conv", Conv2d(8 * h, vocab_size, 1, False, g=g))]))))
            self.blocks = nn.Sequential(OrderedDict(groups))

    return {"dall_e.utils": {"Conv2d": Conv2d}, "dall_e.decoder": {"Decoder": Decoder, "DecoderBlock": DecoderBlock},
            "dall_e.encoder": {"Encoder": Encoder, "EncoderBlock": EncoderBlock}}


@contextmanager
def dall_e_package() -> Iterator[dict]:
    """The stand-in classes registered under ``dall_e.*`` while pickling; removed afterwards."""
    classes = _make_classes()
    added = []
    for modname in ("dall_e", *classes):
        if modname not in sys.modules:
            sys.modules[modname] = types.ModuleType(modname)
            added.append(modname)
    flat = {}
    for modname, items in classes.items():
        for name, cls in items.items():
            cls.__module__ = modname
            cls.__qualname__ = name
            setattr(sys.modules[modname], name, cls)
            flat[name] = cls
    try:
        yield flat
    finally:
        for modname in added:
            del sys.modules[modname]


def write_decoder_pkl(path: Path, n_init=16, n_hid=16, n_blk_per_group=1, vocab_size=64, seed=0,
                      legacy: bool = False) -> dict[str, torch.Tensor]:
    """``torch.save(Decoder(...))`` as the release; returns its state dict (official names) for the reference."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with dall_e_package() as cls:
        dec = cls["Decoder"](n_init, n_hid, n_blk_per_group, vocab_size, seed=seed)
        with warnings.catch_warnings():  # legacy torch.save looks for the stand-ins' source files
            warnings.filterwarnings("ignore", message="Couldn't retrieve source code")
            torch.save(dec, path, _use_new_zipfile_serialization=not legacy)
        return {k: v.detach().clone() for k, v in dec.state_dict().items()}


def write_encoder_pkl(path: Path, n_hid=16, n_blk_per_group=1, vocab_size=64, seed=1) -> dict[str, torch.Tensor]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with dall_e_package() as cls:
        enc = cls["Encoder"](n_hid, n_blk_per_group, vocab_size, seed=seed)
        torch.save(enc, path)
        return {k: v.detach().clone() for k, v in enc.state_dict().items()}


def _reference(sd: dict, x: torch.Tensor, n_blk_per_group: int, resample) -> torch.Tensor:
    """The package's forward, float64, functional, from the official parameter names."""
    d = {k: v.double() for k, v in sd.items()}
    n_layers = 4 * n_blk_per_group

    def conv(p: str, t: torch.Tensor) -> torch.Tensor:
        w = d[f"{p}.w"]
        return F.conv2d(t, w, d[f"{p}.b"], padding=(w.shape[-1] - 1) // 2)

    h = conv("blocks.input", x.double())
    for k in range(1, 5):
        for i in range(1, n_blk_per_group + 1):
            p = f"blocks.group_{k}.block_{i}"
            idp = conv(f"{p}.id_path", h) if f"{p}.id_path.w" in d else h
            r = h
            for j in range(1, 5):
                r = conv(f"{p}.res_path.conv_{j}", r.relu())
            h = idp + r / n_layers ** 2
        if k < 4:
            h = resample(h)
    return conv("blocks.output.conv", h.relu())


def reference_decode(sd: dict, z: torch.Tensor, n_blk_per_group: int) -> torch.Tensor:
    return _reference(sd, z, n_blk_per_group, lambda h: h.repeat_interleave(2, 2).repeat_interleave(2, 3))


def reference_encode(sd: dict, x: torch.Tensor, n_blk_per_group: int) -> torch.Tensor:
    return _reference(sd, x, n_blk_per_group, lambda h: F.max_pool2d(h, 2))
