"""BigGAN-deep generator, our own module, and its loader for the pytorch-pretrained-biggan format.

The published files (``biggan-deep-{128,256,512}-pytorch_model.bin`` + ``-config.json``)
are a ``torch.save``d state dict and a JSON config (keys ``output_dim``, ``z_dim``,
``class_embed_dim``, ``channel_width``, ``num_classes``, ``layers`` as
``[up_sample, in_mult, out_mult]``, ``attention_layer_position``, ``eps``,
``n_stats``).  The package wrapped every convolution and linear layer in
``torch.nn.utils.spectral_norm``, so its state dict stores each such weight as
``<name>.weight_orig`` with the power-iteration vectors ``<name>.weight_u`` and
``<name>.weight_v``; in eval mode the layer uses ``weight_orig / (u . W v)``.
:func:`load_biggan` folds that division into plain weights once, so our module
has ordinary ``nn.Conv2d`` / ``nn.Linear`` layers under the same names
(``embeddings``, ``generator.gen_z``, ``generator.layers.N.bn_0.scale`` ...).

The file is read with ``torch.load(weights_only=True)``: tensors only, nothing
executed.  Conditional batch norm uses the precomputed statistics
(``running_means`` / ``running_vars``, one row per truncation value between 0 and
1) interpolated exactly as the package does, including its coefficient order.
"""
from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from renderer.checkpoint_io import CheckpointError, load_state_dict, strict_copy

log = logging.getLogger(__name__)

CONFIG_KEYS = ("output_dim", "z_dim", "class_embed_dim", "channel_width", "num_classes", "layers",
               "attention_layer_position", "eps", "n_stats")

# The official configs, as convert_tf_to_pytorch.py defines BigGAN128 / 256 / 512.
_L128 = ((False, 16, 16), (True, 16, 16), (False, 16, 16), (True, 16, 8), (False, 8, 8), (True, 8, 4),
         (False, 4, 4), (True, 4, 2), (False, 2, 2), (True, 2, 1))
_L256 = _L128[:5] + ((True, 8, 8), (False, 8, 8), (True, 8, 4), (False, 4, 4), (True, 4, 2), (False, 2, 2),
                     (True, 2, 1))
_L512 = _L256 + ((False, 1, 1), (True, 1, 1))


@dataclass(frozen=True)
class BigGANConfig:
    output_dim: int = 128
    z_dim: int = 128
    class_embed_dim: int = 128
    channel_width: int = 128
    num_classes: int = 1000
    layers: tuple[tuple[bool, int, int], ...] = _L128
    attention_layer_position: int = 8
    eps: float = 1e-4
    n_stats: int = 51

    def to_json(self) -> str:
        """As the package writes it: ``json.dumps(indent=2, sort_keys=True)`` with layers as lists."""
        d = asdict(self)
        d["layers"] = [list(x) for x in self.layers]
        return json.dumps(d, indent=2, sort_keys=True) + "\n"


OFFICIAL = {128: BigGANConfig(output_dim=128, layers=_L128), 256: BigGANConfig(output_dim=256, layers=_L256),
            512: BigGANConfig(output_dim=512, layers=_L512)}


def config_from_mapping(raw: Any, source: str) -> BigGANConfig:
    if not isinstance(raw, Mapping):
        raise CheckpointError(f"{source}: a BigGAN config must be a JSON object, got {type(raw).__name__}")
    unknown = sorted(set(raw) - set(CONFIG_KEYS))
    missing = [k for k in CONFIG_KEYS if k not in raw]
    if unknown or missing:
        raise CheckpointError(f"{source}: not a pytorch-pretrained-biggan config: missing {missing}, "
                              f"unknown {unknown}")
    for key in ("output_dim", "z_dim", "class_embed_dim", "channel_width", "num_classes", "n_stats"):
        v = raw[key]
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise CheckpointError(f"{source}: {key} must be a positive integer, got {v!r}")
    if raw["n_stats"] < 2:
        raise CheckpointError(f"{source}: n_stats must be at least 2, got {raw['n_stats']}")
    layers = raw["layers"]
    if not isinstance(layers, list) or not layers or not all(
            isinstance(x, list) and len(x) == 3 and isinstance(x[0], bool)
            and all(isinstance(c, int) and not isinstance(c, bool) and c > 0 for c in x[1:]) for x in layers):
        raise CheckpointError(f"{source}: layers must be a list of [up_sample, in_mult, out_mult], got {layers!r}")
    pos = raw["attention_layer_position"]
    if not isinstance(pos, int) or isinstance(pos, bool) or not 0 <= pos < len(layers):
        raise CheckpointError(f"{source}: attention_layer_position {pos!r} is not a layer index")
    if not isinstance(raw["eps"], (int, float)) or isinstance(raw["eps"], bool) or raw["eps"] <= 0:
        raise CheckpointError(f"{source}: eps must be a positive number, got {raw['eps']!r}")
    cfg = BigGANConfig(**{**raw, "layers": tuple((bool(a), int(b), int(c)) for a, b, c in layers),
                          "eps": float(raw["eps"])})
    if cfg.z_dim != cfg.class_embed_dim:
        raise CheckpointError(f"{source}: z_dim ({cfg.z_dim}) must equal class_embed_dim ({cfg.class_embed_dim})")
    ups = sum(1 for up, _, _ in cfg.layers if up)
    if 4 * 2 ** ups != cfg.output_dim:
        raise CheckpointError(f"{source}: {ups} upsampling layers give {4 * 2 ** ups} px, "
                              f"but output_dim is {cfg.output_dim}")
    chans = [cfg.layers[0][1]] + [c for _, _, c in cfg.layers]
    if cfg.layers[0][1] != 16 or any(cfg.layers[i][1] != chans[i] for i in range(len(cfg.layers))):
        raise CheckpointError(f"{source}: layer channels do not chain (start at 16, each in = previous out)")
    if cfg.layers[-1][2] * cfg.channel_width < 3:
        raise CheckpointError(f"{source}: the last layer has fewer than 3 channels")
    return cfg


def read_config(path: str | Path) -> BigGANConfig:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: BigGAN config.json not found")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: not a readable BigGAN config.json: {exc}") from exc
    return config_from_mapping(raw, str(path))


def truncation_stats(means: torch.Tensor, varis: torch.Tensor, truncation: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The package's interpolation of the per-truncation statistics (its coefficient order kept as is)."""
    step = 1.0 / (means.shape[0] - 1)
    coef, start = math.modf(truncation / step)
    start = int(start)
    if coef != 0.0:
        return (means[start] * coef + means[start + 1] * (1 - coef),
                varis[start] * coef + varis[start + 1] * (1 - coef))
    return means[start], varis[start]


class CondBatchNorm(nn.Module):
    """Batch norm with precomputed per-truncation statistics; conditional scale/offset from the cond vector."""

    def __init__(self, channels: int, cond_dim: int | None, n_stats: int, eps: float):
        super().__init__()
        self.eps = eps
        self.register_buffer("running_means", torch.zeros(n_stats, channels))
        self.register_buffer("running_vars", torch.ones(n_stats, channels))
        self.conditional = cond_dim is not None
        if self.conditional:
            self.scale = nn.Linear(cond_dim, channels, bias=False)
            self.offset = nn.Linear(cond_dim, channels, bias=False)
        else:
            self.weight = nn.Parameter(torch.ones(channels))
            self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor, truncation: float, cond: torch.Tensor | None = None) -> torch.Tensor:
        mean, var = truncation_stats(self.running_means, self.running_vars, truncation)
        if self.conditional:
            weight = 1 + self.scale(cond)[:, :, None, None]
            bias = self.offset(cond)[:, :, None, None]
            return (x - mean[None, :, None, None]) / torch.sqrt(var[None, :, None, None] + self.eps) * weight + bias
        return F.batch_norm(x, mean, var, self.weight, self.bias, training=False, momentum=0.0, eps=self.eps)


class SelfAttn(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.snconv1x1_theta = nn.Conv2d(ch, ch // 8, 1, bias=False)
        self.snconv1x1_phi = nn.Conv2d(ch, ch // 8, 1, bias=False)
        self.snconv1x1_g = nn.Conv2d(ch, ch // 2, 1, bias=False)
        self.snconv1x1_o_conv = nn.Conv2d(ch // 2, ch, 1, bias=False)
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, ch, h, w = x.shape
        theta = self.snconv1x1_theta(x).view(n, ch // 8, h * w)
        phi = F.max_pool2d(self.snconv1x1_phi(x), 2).view(n, ch // 8, h * w // 4)
        attn = torch.softmax(torch.bmm(theta.permute(0, 2, 1), phi), dim=-1)
        g = F.max_pool2d(self.snconv1x1_g(x), 2).view(n, ch // 2, h * w // 4)
        out = torch.bmm(g, attn.permute(0, 2, 1)).view(n, ch // 2, h, w)
        return x + self.gamma * self.snconv1x1_o_conv(out)


class GenBlock(nn.Module):
    def __init__(self, cin: int, cout: int, cond_dim: int, up: bool, n_stats: int, eps: float):
        super().__init__()
        mid = cin // 4
        self.up = up
        self.drop_channels = cin != cout
        self.bn_0 = CondBatchNorm(cin, cond_dim, n_stats, eps)
        self.conv_0 = nn.Conv2d(cin, mid, 1)
        self.bn_1 = CondBatchNorm(mid, cond_dim, n_stats, eps)
        self.conv_1 = nn.Conv2d(mid, mid, 3, padding=1)
        self.bn_2 = CondBatchNorm(mid, cond_dim, n_stats, eps)
        self.conv_2 = nn.Conv2d(mid, mid, 3, padding=1)
        self.bn_3 = CondBatchNorm(mid, cond_dim, n_stats, eps)
        self.conv_3 = nn.Conv2d(mid, cout, 1)

    def forward(self, x: torch.Tensor, cond: torch.Tensor, truncation: float) -> torch.Tensor:
        x0 = x
        x = self.conv_0(F.relu(self.bn_0(x, truncation, cond)))
        x = F.relu(self.bn_1(x, truncation, cond))
        if self.up:
            x = F.interpolate(x, scale_factor=2, mode="nearest")
        x = self.conv_1(x)
        x = self.conv_2(F.relu(self.bn_2(x, truncation, cond)))
        x = self.conv_3(F.relu(self.bn_3(x, truncation, cond)))
        if self.drop_channels:
            x0 = x0[:, : x0.shape[1] // 2]
        if self.up:
            x0 = F.interpolate(x0, scale_factor=2, mode="nearest")
        return x + x0


class Generator(nn.Module):
    def __init__(self, cfg: BigGANConfig):
        super().__init__()
        ch = cfg.channel_width
        cond = cfg.z_dim * 2
        self.ch = ch
        self.gen_z = nn.Linear(cond, 4 * 4 * 16 * ch)
        layers: list[nn.Module] = []
        for i, (up, cin, cout) in enumerate(cfg.layers):
            if i == cfg.attention_layer_position:
                layers.append(SelfAttn(ch * cin))
            layers.append(GenBlock(ch * cin, ch * cout, cond, up, cfg.n_stats, cfg.eps))
        self.layers = nn.ModuleList(layers)
        self.bn = CondBatchNorm(ch * cfg.layers[-1][2], None, cfg.n_stats, cfg.eps)
        self.conv_to_rgb = nn.Conv2d(ch * cfg.layers[-1][2], ch * cfg.layers[-1][2], 3, padding=1)

    def forward(self, cond: torch.Tensor, truncation: float) -> torch.Tensor:
        z = self.gen_z(cond).view(-1, 4, 4, 16 * self.ch).permute(0, 3, 1, 2).contiguous()  # TF layout
        for layer in self.layers:
            z = layer(z, cond, truncation) if isinstance(layer, GenBlock) else layer(z)
        z = self.conv_to_rgb(F.relu(self.bn(z, truncation)))
        return torch.tanh(z[:, :3])


class BigGAN(nn.Module):
    """``forward(z[N, z_dim], class_vector[N, num_classes], truncation) -> images[N, 3, S, S]`` in [-1, 1]."""

    def __init__(self, cfg: BigGANConfig):
        super().__init__()
        self.cfg = cfg
        self.embeddings = nn.Linear(cfg.num_classes, cfg.z_dim, bias=False)
        self.generator = Generator(cfg)

    def forward(self, z: torch.Tensor, class_vector: torch.Tensor, truncation: float) -> torch.Tensor:
        if not 0 < truncation <= 1:
            raise ValueError(f"truncation must be in (0, 1], got {truncation}")
        return self.generator(torch.cat([z, self.embeddings(class_vector)], dim=1), truncation)


def fold_spectral_norm(sd: Mapping[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    """``X.weight_orig`` / ``X.weight_u`` / ``X.weight_v`` -> ``X.weight = weight_orig / (u . W v)`` (eval mode)."""
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        if key.endswith((".weight_u", ".weight_v")):
            if key.rsplit(".", 1)[0] + ".weight_orig" not in sd:
                raise CheckpointError(f"{source}: {key} without its weight_orig")
            continue
        if not key.endswith(".weight_orig"):
            out[key] = value
            continue
        prefix = key[: -len(".weight_orig")]
        try:
            u, v = sd[prefix + ".weight_u"], sd[prefix + ".weight_v"]
        except KeyError:
            raise CheckpointError(f"{source}: {key} lacks its spectral-norm vectors weight_u / weight_v") from None
        w = value.float()
        mat = w.reshape(w.shape[0], -1)
        if u.shape != (mat.shape[0],) or v.shape != (mat.shape[1],):
            raise CheckpointError(f"{source}: spectral-norm vectors of {prefix} have shapes {list(u.shape)}, "
                                  f"{list(v.shape)}; the weight needs [{mat.shape[0]}], [{mat.shape[1]}]")
        sigma = torch.dot(u.float(), torch.mv(mat, v.float()))
        if not torch.isfinite(sigma) or float(sigma) == 0.0:
            raise CheckpointError(f"{source}: spectral norm of {prefix} is {float(sigma)}: damaged weights")
        out[prefix + ".weight"] = w / sigma
    return out


def load_biggan(weights: str | Path, config: str | Path | BigGANConfig | None = None) -> BigGAN:
    """Build our :class:`BigGAN` from the package's ``config.json`` and load its state dict by name."""
    weights = Path(weights)
    if config is None:
        config = weights.with_suffix(".json")
    cfg = config if isinstance(config, BigGANConfig) else read_config(config)
    sd = load_state_dict(weights, "BigGAN state dict")
    model = BigGAN(cfg)
    strict_copy(model, fold_spectral_norm(sd, str(weights)), str(weights), "BigGAN-deep state dict")
    for name, p in model.state_dict().items():
        if p.is_floating_point() and not torch.isfinite(p).all():
            raise CheckpointError(f"{weights}: {name} holds NaN or infinite values: damaged weights")
    return model.eval().requires_grad_(False)


def random_biggan(cfg: BigGANConfig, seed: int = 0) -> BigGAN:
    """A randomly initialised BigGAN of ``cfg`` (tests and the tiny demo); statistics made plausible."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = BigGAN(cfg)
        for m in model.modules():
            if isinstance(m, CondBatchNorm):
                m.running_means.normal_(0, 0.1)
                m.running_vars.uniform_(0.5, 1.5)
    return model.eval().requires_grad_(False)


def tiny_config() -> BigGANConfig:
    """A 32 px BigGAN-deep with the official layout, narrow: 3 upsampling blocks, attention in the middle."""
    return BigGANConfig(output_dim=32, z_dim=16, class_embed_dim=16, channel_width=4, num_classes=1000,
                        layers=((False, 16, 16), (True, 16, 8), (False, 8, 8), (True, 8, 4), (True, 4, 2)),
                        attention_layer_position=2, eps=1e-4, n_stats=51)


def activation_bytes(cfg: BigGANConfig, batch: int = 1, act_bytes: int = 4) -> int:
    """Activations one forward+backward keeps, from the config (used by the memory model)."""
    ch, res, total = cfg.channel_width, 4, 0.0
    for i, (up, cin, cout) in enumerate(cfg.layers):
        if i == cfg.attention_layer_position:
            total += 3 * ch * cin * res * res + (res * res) ** 2 / 4
        out_res = res * 2 if up else res
        mid = ch * cin // 4
        total += 2 * ch * cin * res * res + 6 * mid * out_res * out_res + 2 * ch * cout * out_res * out_res
        res = out_res
    total += 4 * ch * cfg.layers[-1][2] * res * res
    return int(total * batch * act_bytes)


def param_count(cfg: BigGANConfig) -> int:
    with torch.device("meta"):
        return sum(p.numel() for p in BigGAN(cfg).parameters()) + sum(b.numel() for b in BigGAN(cfg).buffers())
