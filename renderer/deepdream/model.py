"""The classifiers DeepDream climbs: torchvision's GoogLeNet and Inception v3, with their published weights.

The architectures are torchvision's own (``torchvision.models.googlenet`` /
``inception_v3``, built with ``weights=None`` so nothing is downloaded); the
weights are the files torchvision publishes, installed by ``fetch-models`` and
read with ``torch.load(weights_only=True)``.  As torchvision does for its
pretrained weights, the models are built with ``aux_logits=True`` to accept the
auxiliary heads' keys, which are then dropped, and with ``transform_input=True``
(the weights were trained on inputs scaled to [-1, 1]; the ImageNet-normalised
input is converted inside the model).

Layers are addressed by torchvision's module names (``inception4c``,
``inception4d.branch3``, ``Mixed_6b``) or, for GoogLeNet, by the classic Caffe
names of the 2015 notebook (``mixed4c`` = ``inception4c``, ``conv2d2`` = ``conv3``).
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from renderer.checkpoint_io import CheckpointError, load_state_dict, strict_copy

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
ARCHITECTURES = ("googlenet", "inception_v3")
_CAFFE = {"conv2d0": "conv1", "conv2d1": "conv2", "conv2d2": "conv3"}


def build(arch: str, init: bool = True) -> nn.Module:
    """torchvision's architecture with the pretrained weights' layout (randomly initialised when ``init``)."""
    import torchvision

    if arch == "googlenet":
        return torchvision.models.googlenet(weights=None, aux_logits=True, init_weights=init, transform_input=True)
    if arch == "inception_v3":
        return torchvision.models.inception_v3(weights=None, aux_logits=True, init_weights=init,
                                               transform_input=True)
    raise CheckpointError(f"unknown DeepDream architecture {arch!r}; known: {', '.join(ARCHITECTURES)}")


def drop_aux(model: nn.Module) -> nn.Module:
    """As torchvision does after loading pretrained weights without ``aux_logits``."""
    model.aux_logits = False
    for name in ("aux1", "aux2", "AuxLogits"):
        if hasattr(model, name):
            setattr(model, name, None)
    return model


def guess_arch(sd: dict, source: str) -> str:
    if "inception4c.branch1.conv.weight" in sd:
        return "googlenet"
    if "Mixed_6b.branch1x1.conv.weight" in sd:
        return "inception_v3"
    raise CheckpointError(f"{source}: neither a torchvision GoogLeNet nor an Inception v3 state dict "
                          f"(first keys: {list(sd)[:4]})")


def load_classifier(path: str | Path, arch: str | None = None) -> tuple[nn.Module, str]:
    """(model, architecture) from a torchvision weights file; errors name the file."""
    path = Path(path)
    sd = load_state_dict(path, "torchvision classifier state dict")
    arch = arch or guess_arch(sd, str(path))
    model = build(arch, init=False)
    strict_copy(model, sd, str(path), f"torchvision {arch} state dict")
    return drop_aux(model).eval().requires_grad_(False), arch


def random_classifier(arch: str = "googlenet", seed: int = 0) -> nn.Module:
    """torchvision's architecture with He-initialised convolutions (activations of order one, so the
    untrained network still dreams visible patterns)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build(arch, init=False)
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
        return drop_aux(model).eval().requires_grad_(False)


def resolve_layer(model: nn.Module, name: str) -> str:
    """A module name of ``model`` for ``name`` (torchvision's, or GoogLeNet's classic ``mixed4c``)."""
    modules = dict(model.named_modules())
    m = re.fullmatch(r"mixed(\d[a-e])(.*)", name)
    candidates = [name, _CAFFE.get(name, name)]
    if m:
        candidates.append(f"inception{m.group(1)}{m.group(2)}")
    for c in candidates:
        if c and c in modules:
            return c
    tops = [n for n in modules if n and "." not in n and not n.startswith(("aux", "Aux", "fc", "dropout", "avgpool"))]
    raise ValueError(f"layer {name!r} is not in this network; its layers are {', '.join(tops)} "
                     "(and their branches, e.g. inception4d.branch2)")


class LayerTaps:
    """Forward hooks that keep the outputs of the named layers for one pass."""

    def __init__(self, model: nn.Module, names: Sequence[str]):
        self.names = [resolve_layer(model, n) for n in names]
        self.outputs: dict[str, torch.Tensor] = {}
        modules = dict(model.named_modules())
        self._handles = [modules[n].register_forward_hook(self._hook(n)) for n in self.names]

    def _hook(self, name: str):
        def hook(_module: nn.Module, _inp: object, out: torch.Tensor) -> None:
            self.outputs[name] = out
        return hook

    def close(self) -> None:
        for h in self._handles:
            h.remove()


@dataclass
class Classifier:
    """A classifier ready to dream with: ImageNet normalisation and the deepest layer needed."""

    model: nn.Module
    arch: str

    def activations(self, image: torch.Tensor, taps: LayerTaps) -> dict[str, torch.Tensor]:
        """Run ``image`` in [0, 1] far enough to fill ``taps`` (the classifier head is skipped)."""
        mean = torch.tensor(IMAGENET_MEAN, device=image.device, dtype=image.dtype).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, device=image.device, dtype=image.dtype).view(1, 3, 1, 1)
        x = (image - mean) / std
        taps.outputs.clear()
        m = self.model
        if getattr(m, "transform_input", False):
            x = m._transform_input(x)
        wanted = {n.split(".")[0] for n in taps.names}
        for name, child in m.named_children():
            if child is None or name in ("avgpool", "dropout", "fc", "aux1", "aux2", "AuxLogits"):
                continue
            x = child(x)
            wanted.discard(name)
            if not wanted:
                break
        return dict(taps.outputs)


def activation_elems_per_pixel(model: nn.Module, layers: Sequence[str]) -> float:
    """Activation elements kept per input pixel up to the deepest tapped layer (meta-device dry run)."""
    import copy

    with torch.device("meta"):
        meta = copy.deepcopy(model).to("meta")
    total = [0]

    def count(_m: nn.Module, _i: object, out: object) -> None:
        if isinstance(out, torch.Tensor):
            total[0] += out.numel()

    handles = [m.register_forward_hook(count) for m in meta.modules() if not list(m.children())]
    taps = LayerTaps(meta, layers)
    try:
        Classifier(meta, "").activations(torch.zeros(1, 3, 224, 224, device="meta"), taps)
    finally:
        taps.close()
        for h in handles:
            h.remove()
    return total[0] / (224 * 224)
