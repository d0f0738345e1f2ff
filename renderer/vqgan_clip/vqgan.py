"""VQGAN built from taming-transformers' building blocks, and a safe loader for its official checkpoints.

Only ``taming.modules`` is used (``Encoder``, ``Decoder``, ``VectorQuantizer2``,
``GumbelQuantize``); ``taming.models`` is never imported.  :class:`VQGAN` keeps
the official parameter names (``encoder.*``, ``quant_conv.*``, ``quantize.*``,
``post_quant_conv.*``, ``decoder.*``) so an official ``state_dict`` loads by
name.  The official Lightning ``.ckpt`` is read through a restricted unpickler
(:func:`read_lightning_state_dict`): tensors and plain containers only; the
Lightning bookkeeping classes it names become inert placeholders that are never
imported, and any other global is refused with an error naming the file.
"""
from __future__ import annotations

import contextlib
import functools
import io
import logging
import pickle
import types
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from renderer.base import CheckpointError
from renderer.layer_swap import swap_classes
from renderer.winograd import use_direct

log = logging.getLogger(__name__)

TARGET_VQ = "taming.models.vqgan.VQModel"
TARGET_GUMBEL = "taming.models.vqgan.GumbelVQ"
KNOWN_TARGETS = {TARGET_VQ: False, TARGET_GUMBEL: True}
REQUIRED_DDCONFIG = ("ch", "out_ch", "ch_mult", "num_res_blocks", "attn_resolutions", "in_channels",
                     "resolution", "z_channels")
MODEL_PREFIXES = ("encoder.", "decoder.", "quant_conv.", "post_quant_conv.", "quantize.")




class UnsafeCheckpointError(CheckpointError):
    """The checkpoint's pickle asks for a global we refuse to load; nothing from it was executed."""


@dataclass(frozen=True)
class VQGANConfig:
    ddconfig: Mapping[str, Any]
    n_embed: int
    embed_dim: int
    gumbel: bool = False
    source: str = "<memory>"
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def factor(self) -> int:
        """Pixels per latent cell along each axis (16 for the f16 models)."""
        return 2 ** (len(self.ddconfig["ch_mult"]) - 1)


def tiny_config(gumbel: bool = False) -> VQGANConfig:
    """A very small random-initialisable VQGAN (f4, 16 codes) for tests and the weights-free demo.

    ``ch`` must be a multiple of 32: taming's ``Normalize`` is ``GroupNorm(32, ch)``.
    """
    z = 16 if gumbel else 8
    dd = dict(double_z=False, z_channels=z, resolution=32, in_channels=3, out_ch=3, ch=32,
              ch_mult=[1, 1, 2], num_res_blocks=1, attn_resolutions=[8], dropout=0.0)
    return VQGANConfig(ddconfig=dd, n_embed=16, embed_dim=z, gumbel=gumbel, source="tiny")


def config_from_mapping(cfg: Mapping[str, Any], source: str = "<memory>") -> VQGANConfig:
    """Validate an official taming ``model.yaml`` (already parsed) into a :class:`VQGANConfig`."""
    model = cfg.get("model") if isinstance(cfg, Mapping) else None
    if not isinstance(model, Mapping):
        raise CheckpointError(f"{source}: missing table 'model'")
    target = model.get("target")
    if target not in KNOWN_TARGETS:
        raise CheckpointError(f"{source}: model.target is {target!r}; allowed: {', '.join(KNOWN_TARGETS)}")
    params = model.get("params")
    if not isinstance(params, Mapping):
        raise CheckpointError(f"{source}: missing table 'model.params'")
    dd = params.get("ddconfig")
    if not isinstance(dd, Mapping):
        raise CheckpointError(f"{source}: missing table 'model.params.ddconfig'")
    missing = [k for k in REQUIRED_DDCONFIG if k not in dd]
    if missing:
        raise CheckpointError(f"{source}: model.params.ddconfig lacks {', '.join(missing)}")
    for key in ("n_embed", "embed_dim"):
        if not isinstance(params.get(key), int) or params[key] <= 0:
            raise CheckpointError(f"{source}: model.params.{key} must be a positive integer, got {params.get(key)!r}")
    gumbel = KNOWN_TARGETS[target]
    if gumbel and params["embed_dim"] != dd["z_channels"]:
        raise CheckpointError(f"{source}: GumbelVQ needs model.params.embed_dim == ddconfig.z_channels")
    return VQGANConfig(ddconfig=dict(dd), n_embed=int(params["n_embed"]), embed_dim=int(params["embed_dim"]),
                       gumbel=gumbel, source=source)


def read_config(path: str | Path) -> VQGANConfig:
    import yaml

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise CheckpointError(f"{path}: cannot read VQGAN config: {exc}") from exc
    return config_from_mapping(data, source=str(path))


def config_to_yaml(cfg: VQGANConfig) -> str:
    """The official ``model.yaml`` layout for ``cfg`` (used by tests and the tiny demo)."""
    import yaml

    params: dict[str, Any] = {"embed_dim": cfg.embed_dim, "n_embed": cfg.n_embed, "ddconfig": dict(cfg.ddconfig),
                              "lossconfig": {"target": "taming.modules.losses.vqperceptual.DummyLoss"}}
    if cfg.gumbel:
        params["kl_weight"] = 1.0e-08
    target = TARGET_GUMBEL if cfg.gumbel else TARGET_VQ
    return yaml.safe_dump({"model": {"base_learning_rate": 4.5e-06, "target": target, "params": params}})


class _ClampWithGrad(torch.autograd.Function):
    """Clamp forward; backward lets the gradient through unless it pushes further out of range."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
        ctx.lo, ctx.hi = lo, hi
        ctx.save_for_backward(x)
        return x.clamp(lo, hi)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        (x,) = ctx.saved_tensors
        outside = ((x < ctx.lo) & (grad > 0)) | ((x > ctx.hi) & (grad < 0))
        return grad.masked_fill(outside, 0), None, None


def clamp_with_grad(x: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    return _ClampWithGrad.apply(x, lo, hi)


def nearest_codes(x: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """Index of the nearest codebook row for each vector of ``x`` (..., D)."""
    flat = x.reshape(-1, x.shape[-1]).float()
    cb = codebook.float()
    d = flat.pow(2).sum(1, keepdim=True) + cb.pow(2).sum(1) - 2 * flat @ cb.t()
    return d.argmin(1).reshape(x.shape[:-1])


def vector_quantize(x: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """Snap each vector of ``x`` (..., D) to its nearest codebook row; gradient passes straight through."""
    q = codebook[nearest_codes(x, codebook)].to(x.dtype)
    return x + (q - x).detach()


# The 2x nearest upsampling + 3x3 convolution of taming's decoder as one stride-2 transposed convolution with a
# 4x4 kernel.  An output pixel of phase (a, b) sees, through the duplicated pixels, only 2x2 input pixels, with
# the 3x3 taps that land on the same input pixel summed: along one axis taps (w0, w1, w2) act on input offsets
# (-1, 0, 0) for even outputs and (0, 0, +1) for odd ones.  A transposed convolution (stride 2, padding 1) gives
# output 2m + a the input i through kernel position k = 2 * (m - i) + a + 1, so the 4 positions hold
# (w2, w1 + w2, w0 + w1, w0); _POLYPHASE maps the 3 taps onto them.
_POLYPHASE = torch.tensor([[0.0, 0.0, 1.0], [0.0, 1.0, 1.0], [1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])


class PolyphaseUpsample(nn.Module):
    """taming's ``Upsample`` (nearest 2x, then a 3x3 convolution) without making the upsampled copy.

    The same function to float rounding, with 16 multiply-adds per input pixel and channel pair instead of
    the 36 the 3x3 convolution spends on the four duplicated pixels (2.25x fewer), and no intermediate
    tensor four times the input's size.  It keeps the original ``conv`` (so checkpoints load by the same
    names); the 4x4 kernel is derived from its weight at each call (a few MB of arithmetic).
    """

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        if conv.kernel_size != (3, 3) or conv.stride != (1, 1) or conv.padding != (1, 1) or conv.groups != 1:
            raise ValueError(f"PolyphaseUpsample needs a 3x3, stride 1, padding 1 convolution, got {conv}")
        self.conv = conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.conv.weight
        with torch.autocast(x.device.type, enabled=False):  # the tap sums in the weight's own precision
            m = _POLYPHASE.to(w.device, w.dtype)
            kernel = torch.einsum("ya,oiab,xb->ioyx", m, w, m)  # (in, out, 4, 4), conv_transpose2d's layout
        return F.conv_transpose2d(x, kernel, self.conv.bias, stride=2, padding=1)  # (autocast casts as for conv)


def use_polyphase_upsampling(decoder: nn.Module) -> int:
    """Swap each ``Upsample`` with a convolution in a taming decoder for :class:`PolyphaseUpsample`."""
    swapped = 0
    for level in getattr(decoder, "up", []):
        up = getattr(level, "upsample", None)
        if up is not None and getattr(up, "with_conv", False) and not isinstance(up, PolyphaseUpsample):
            level.upsample = PolyphaseUpsample(up.conv)
            swapped += 1
    return swapped


@functools.lru_cache(maxsize=None)
def _fused_swish_classes() -> dict[type, type]:
    """taming's classes -> ours with the swish, ``x * sigmoid(x)``, as ``F.silu`` (built at first use: taming is
    imported only with a model)."""
    from taming.modules.diffusionmodules.model import Decoder, ResnetBlock

    class SiluResnetBlock(ResnetBlock):
        """taming's ``ResnetBlock`` with ``F.silu``: the same function in one pass forward and one fused pass
        backward, where the two-op form makes a sigmoid tensor and a product and, backward, several more
        passes (about a fifth of a Doorways floor step on the CPU, by the profile)."""

        def forward(self, x: torch.Tensor, temb: torch.Tensor | None) -> torch.Tensor:
            h = self.conv1(F.silu(self.norm1(x)))
            if temb is not None:
                h = h + self.temb_proj(F.silu(temb))[:, :, None, None]
            h = self.conv2(self.dropout(F.silu(self.norm2(h))))
            if self.in_channels != self.out_channels:
                x = self.conv_shortcut(x) if self.use_conv_shortcut else self.nin_shortcut(x)
            return x + h

    class SiluDecoder(Decoder):
        """taming's ``Decoder`` whose last swish is ``F.silu`` (its blocks are swapped separately)."""

        def forward(self, z: torch.Tensor) -> torch.Tensor:
            return _decode(self, z, checkpointed=False)

    return {ResnetBlock: SiluResnetBlock, Decoder: SiluDecoder}


def use_fused_swish(module: nn.Module) -> int:
    """Make every taming ``ResnetBlock`` (and ``Decoder``) under ``module`` compute its swish with ``F.silu``."""
    return swap_classes(module, _fused_swish_classes())


def use_taming_layers(decoder: nn.Module) -> int:
    """Undo :func:`use_polyphase_upsampling`, :func:`use_fused_swish` and :func:`renderer.winograd.use_winograd`:
    taming's own layers, as the classic notebooks ran them (the benchmarks' baseline and the tests' reference)."""
    from taming.modules.diffusionmodules.model import Upsample

    swapped = use_direct(decoder)
    for level in getattr(decoder, "up", []):
        up = getattr(level, "upsample", None)
        if isinstance(up, PolyphaseUpsample):
            plain = Upsample(up.conv.in_channels, with_conv=False)
            plain.with_conv, plain.conv = True, up.conv
            level.upsample = plain
            swapped += 1
    return swapped + swap_classes(decoder, {ours: theirs for theirs, ours in _fused_swish_classes().items()})


class VQGAN(nn.Module):
    """Encoder, quant_conv, quantize, post_quant_conv, decoder: the official VQModel/GumbelVQ layout."""

    def __init__(self, cfg: VQGANConfig):
        super().__init__()
        from taming.modules.diffusionmodules.model import Decoder, Encoder
        from taming.modules.vqvae.quantize import GumbelQuantize, VectorQuantizer2

        self.cfg = cfg
        dd = dict(cfg.ddconfig)
        with contextlib.redirect_stdout(io.StringIO()):  # taming prints the z shape
            self.encoder = Encoder(**dd)
            self.decoder = Decoder(**dd)
        use_polyphase_upsampling(self.decoder)
        use_fused_swish(self)
        z_ch = dd["z_channels"]
        if cfg.gumbel:
            self.quantize = GumbelQuantize(z_ch, cfg.embed_dim, n_embed=cfg.n_embed, kl_weight=1e-8, temp_init=1.0)
        else:
            self.quantize = VectorQuantizer2(cfg.n_embed, cfg.embed_dim, beta=0.25)
        self.quant_conv = nn.Conv2d(z_ch, cfg.embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(cfg.embed_dim, z_ch, 1)
        self.grad_checkpoint = False

    @property
    def factor(self) -> int:
        return self.cfg.factor

    @property
    def codebook(self) -> torch.Tensor:
        return self.quantize.embed.weight if self.cfg.gumbel else self.quantize.embedding.weight

    def latent_bounds(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-channel min and max of the codebook, shaped (1, C, 1, 1): the box z is clamped to."""
        cb = self.codebook.detach()
        return cb.min(0).values[None, :, None, None], cb.max(0).values[None, :, None, None]

    def quantize_st(self, z: torch.Tensor) -> torch.Tensor:
        """Straight-through quantisation of a (B, C, h, w) latent onto the codebook."""
        return vector_quantize(z.movedim(1, 3), self.codebook).movedim(3, 1)

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Image in [-1, 1] (B, 3, H, W) -> quantised latent (B, embed_dim, H/f, W/f)."""
        h = self.quant_conv(self.encoder(x))
        if self.cfg.gumbel:
            idx = self.quantize.proj(h).argmax(1)  # deterministic: the most likely code, no Gumbel noise
        else:
            idx = nearest_codes(h.movedim(1, 3), self.codebook)
        return self.codebook[idx].movedim(3, 1).contiguous()

    def decode(self, z_q: torch.Tensor) -> torch.Tensor:
        """Quantised latent -> image in about [-1, 1]."""
        h = self.post_quant_conv(z_q)
        if self.grad_checkpoint and torch.is_grad_enabled():
            return _decode(self.decoder, h, checkpointed=True)
        return self.decoder(h)

    def synth(self, z: torch.Tensor) -> torch.Tensor:
        """Continuous latent -> image in [0, 1] through straight-through quantisation."""
        return clamp_with_grad(self.decode(self.quantize_st(z)).add(1).div(2), 0.0, 1.0)

    def random_latent(self, height: int, width: int, generator: torch.Generator) -> torch.Tensor:
        """Random codebook entries for an image of ``height`` x ``width`` pixels (1, C, h, w)."""
        h, w = height // self.factor, width // self.factor
        idx = torch.randint(0, self.cfg.n_embed, (h * w,), generator=generator)
        cb = self.codebook.detach()
        return cb[idx.to(cb.device)].reshape(1, h, w, -1).movedim(3, 1).contiguous()


def _decode(dec: nn.Module, z: torch.Tensor, checkpointed: bool) -> torch.Tensor:
    """taming ``Decoder.forward`` (no timestep embedding), its last swish as ``F.silu``; ``checkpointed``: each
    block recomputed in backward (for big canvases)."""
    from torch.utils.checkpoint import checkpoint

    def ck(fn: Any, *args: Any) -> torch.Tensor:
        return checkpoint(fn, *args, use_reentrant=False) if checkpointed else fn(*args)

    h = dec.conv_in(z)
    h = ck(dec.mid.block_1, h, None)
    h = ck(dec.mid.attn_1, h)
    h = ck(dec.mid.block_2, h, None)
    for i_level in reversed(range(dec.num_resolutions)):
        up = dec.up[i_level]
        for i_block in range(dec.num_res_blocks + 1):
            h = ck(up.block[i_block], h, None)
            if len(up.attn) > 0:
                h = ck(up.attn[i_block], h)
        if i_level != 0:
            h = ck(up.upsample, h)
    if dec.give_pre_end:
        return h
    return dec.conv_out(F.silu(dec.norm_out(h)))


# --------------------------------------------------------------------------- safe checkpoint reading

_TENSOR_GLOBALS = {
    ("torch._utils", "_rebuild_tensor_v2"),
    ("torch._utils", "_rebuild_tensor"),
    ("torch._utils", "_rebuild_parameter"),
    ("torch._utils", "_rebuild_parameter_with_state"),
    ("collections", "OrderedDict"),
    ("collections", "defaultdict"),
    ("torch", "Size"),
    ("torch", "device"),
}
# Plain value types a pickle may name (protocol 2 spells them ``__builtin__.*``; ``long`` is ``int``).
# omegaconf's node metadata refers to them (``object_type=dict``, ``key_type=int``).
_BUILTIN_TYPES = {"dict", "list", "tuple", "set", "frozenset", "int", "long", "float", "complex", "str", "unicode",
                  "bool", "bytes", "bytearray"}
# Bookkeeping Lightning writes beside the weights: callback-state keys (Lightning 1.0-1.4 keyed them by the
# callback class), ``hyper_parameters`` (an ``AttributeDict`` or omegaconf ``DictConfig`` whose metadata names
# ``typing.Any``), numpy scalars in callback states.  They become inert placeholders of our own; their
# modules are never imported.
_INERT_PREFIXES = ("pytorch_lightning.", "lightning.", "lightning_fabric.", "omegaconf.", "numpy.")
_INERT_MODULES = ("pytorch_lightning", "lightning", "lightning_fabric", "omegaconf", "numpy", "typing")


class _Inert:
    """Stands in for a Lightning/omegaconf/numpy object inside a checkpoint; holds nothing, runs nothing.

    It accepts whatever the pickle does to it (constructor arguments, ``BUILD`` state, dict items from
    ``SETITEMS``, list items from ``APPENDS``, as dict/list subclasses such as Lightning's ``AttributeDict``
    are written) and throws all of it away.
    """

    qualname = "?"

    def __new__(cls, *args: Any, **kwargs: Any) -> "_Inert":
        return object.__new__(cls)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        pass

    def __setitem__(self, key: Any, value: Any) -> None:
        pass

    def append(self, item: Any) -> None:
        pass

    def extend(self, items: Any) -> None:
        pass

    def __reduce__(self) -> Any:
        raise TypeError("placeholder objects from a checkpoint cannot be pickled again")

    def __repr__(self) -> str:
        return f"<inert {self.qualname}>"


def _latin1_bytes(text: str, encoding: str = "latin1") -> bytes:
    """``_codecs.encode`` as protocol-2 pickles use it to spell ``bytes`` (e.g. inside numpy scalars)."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"unexpected _codecs.encode({type(text).__name__}, {encoding!r})")
    return text.encode("latin1")


def _safe_pickle_module(source: str) -> types.ModuleType:
    """A ``pickle_module`` for ``torch.load`` whose unpickler resolves only allow-listed globals.

    ``torch.load`` itself resolves the ``torch.*Storage`` names before this unpickler is asked.
    """

    class RestrictedUnpickler(pickle.Unpickler):
        def find_class(self, module: str, name: str) -> Any:
            if (module, name) in _TENSOR_GLOBALS:
                return super().find_class(module, name)
            if module in ("__builtin__", "builtins") and name in _BUILTIN_TYPES:
                return super().find_class(module, name)  # maps __builtin__.long -> int
            if module == "_codecs" and name == "encode":
                return _latin1_bytes
            if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
                return getattr(torch, name)
            if (module, name) == ("torch.torch_version", "TorchVersion"):
                return str  # a str subclass holding torch.__version__
            if module.startswith(_INERT_PREFIXES) or module in _INERT_MODULES:
                return type(name, (_Inert,), {"qualname": f"{module}.{name}"})
            raise UnsafeCheckpointError(
                f"{source}: refusing to load global {module}.{name} from the checkpoint "
                "(only tensors and plain containers are read; nothing in the file was executed)"
            )

    mod = types.ModuleType("restricted_pickle")
    mod.Unpickler = RestrictedUnpickler  # type: ignore[attr-defined]
    mod.load = lambda f, **kw: RestrictedUnpickler(f, **kw).load()  # type: ignore[attr-defined]
    mod.__dict__["UnpicklingError"] = pickle.UnpicklingError
    return mod


def read_lightning_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The ``state_dict`` of an official Lightning ``.ckpt`` (or of a bare state-dict file), read safely."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    use_mmap = zipfile.is_zipfile(path)
    try:
        obj = torch.load(path, map_location="cpu", pickle_module=_safe_pickle_module(str(path)),
                         weights_only=False, mmap=use_mmap)
    except UnsafeCheckpointError:
        raise
    except Exception as exc:  # damaged or truncated: torch raises many kinds; each names this file here
        raise CheckpointError(f"{path}: not a readable checkpoint: {type(exc).__name__}: {exc}") from exc
    sd = obj.get("state_dict", obj) if isinstance(obj, dict) else None
    if not isinstance(sd, Mapping) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise CheckpointError(f"{path}: no 'state_dict' of tensors in the checkpoint")
    return dict(sd)


def model_weights(sd: Mapping[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    """Keep only the VQGAN's own parameters (the loss / discriminator / LPIPS keys are dropped)."""
    kept = {k: v for k, v in sd.items() if k.startswith(MODEL_PREFIXES)}
    dropped = len(sd) - len(kept)
    if dropped:
        log.debug("%s: dropped %d non-model keys (loss, discriminator)", source, dropped)
    return kept


def load_vqgan(ckpt: str | Path, config: str | Path | VQGANConfig | None = None,
               device: torch.device | str = "cpu") -> VQGAN:
    """Build :class:`VQGAN` from the official ``.yaml`` (default: beside the ckpt) and load its weights."""
    ckpt = Path(ckpt)
    if config is None:
        config = ckpt.with_suffix(".yaml")
    cfg = config if isinstance(config, VQGANConfig) else read_config(config)
    sd = model_weights(read_lightning_state_dict(ckpt), str(ckpt))
    model = VQGAN(cfg)
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{ckpt}: weights do not match the config {cfg.source}: {exc}") from exc
    return model.eval().requires_grad_(False).to(device)


def save_lightning_checkpoint(model: VQGAN, path: str | Path, extra: Mapping[str, Any] | None = None) -> Path:
    """Write ``model`` as an official-style Lightning ``.ckpt`` (a dict with ``state_dict`` and bookkeeping)."""
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    sd["loss.discriminator.main.0.weight"] = torch.zeros(4, 3, 4, 4)
    sd["loss.logvar"] = torch.zeros(())
    obj: dict[str, Any] = {"epoch": 3, "global_step": 1234, "pytorch-lightning_version": "1.0.8",
                           "state_dict": sd, "optimizer_states": [], "lr_schedulers": []}
    obj.update(extra or {})
    path = Path(path)
    torch.save(obj, path)
    return path
