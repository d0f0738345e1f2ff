"""The weights-free default generator: a style-modulated compositional pattern network.

A fresh machine has no trained model, yet the show should look like itself from the
first minute.  This generator follows the Strange Attractions recipe (a W+ latent of
shape ``(num_ws, 512)`` drawn as ``N(0, I) * sigma`` and fed straight into a synthesis
network) with a randomly initialised compositional pattern network (CPPN) standing in
for StyleGAN's synthesis network:

* every pixel's coordinates (``x``, ``y``, ``r`` and a few fixed sinusoidal features)
  go through ``depth`` small fully connected layers with mixed activations (sin, tanh,
  gaussian, abs) and a final layer with three outputs;
* each layer takes its own slice of the W+ latent through a fixed random affine into a
  per-input *scale* and a per-output *shift*, as StyleGAN's per-layer styles do; the
  scale is folded into the layer's weights (weight modulation), so a style costs
  nothing per pixel;
* the three outputs pick colours from a cosine palette drawn from the seed.

Small sigma leaves the styles near their mean and the picture calm and smooth; large
sigma multiplies coordinates and features by large, mixed-sign scales and the sines
fold them into wild, high-frequency abstractions.  The network's weights come from
``arch_seed`` and the latent and palette from the request's seed, so the same
(settings, seed, sigma, size) gives the same bytes on the same machine with the same
number of torch threads (other thread counts change a few pixels by one level).

``python -m renderer.generators.default sheet OUT.png`` writes a seeds x sigmas
contact sheet.
"""
from __future__ import annotations

import contextlib
import logging
import math
import time
from dataclasses import dataclass
from typing import Any, Iterator, Mapping

import torch

from renderer.base import (
    GeneratorUnavailable,
    RenderCancelled,
    RenderContext,
    RenderRequest,
    RenderResult,
    register,
)

log = logging.getLogger(__name__)

NAME = "default"
LABEL = "weights-free pattern network (no trained model)"
W_DIM = 512
PALETTES = ("cosine", "hsv")
MAX_SIDE = 8192
# Torch threads for a render.  The network is narrow (24 features), so a second thread gains little, and on
# a machine also drawing the display (or shared), every parallel region waits for a descheduled thread: with
# two threads a 512 px picture took 2-12 s under a load of 12 on two cores, with one 0.5 s.
RENDER_THREADS = 1
CHUNK_PIXELS = 1 << 14  # pixels per forward pass; bounds memory at any image size
WARM_UP_SIDE = 512  # the picture rendered (and dropped) when the generator is built: the usual canvas

DEFAULTS: dict[str, Any] = {
    "sigma": 1.0,
    "num_ws": 14,
    "depth": 5,
    "width": 24,
    "arch_seed": 20190512,
    "palette": "cosine",
    "fourier": 6,
    # bfloat16 autocast quantises the pixel coordinates of the first layer and shows as
    # stair-steps at high sigma; float32 costs ~0.1 s more at 1024, so it is opt-in.
    "autocast": False,
}
# keys an exhibit's [generator] table may carry besides the ones above
_PASSTHROUGH_KEYS = frozenset({"name"})

# activation applied to each quarter of a hidden layer, in this order
_ACTIVATIONS = ("sin", "tanh", "gauss", "abs")

# shape constants of the network (part of its identity: changing them changes every picture)
FOURIER_SCALE = 1.0
HIDDEN_GAIN = 1.2
BASE_ZOOM = 1.0
ZOOM_GAIN = 0.6
SHEAR_GAIN = 0.25
OFFSET_GAIN = 0.6
DEMOD = 0.5


# ----------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class Settings:
    sigma: float
    num_ws: int
    depth: int
    width: int
    arch_seed: int
    palette: str
    fourier: int
    autocast: bool = False

    def arch_key(self) -> tuple[int, int, int, int, int]:
        return (self.arch_seed, self.num_ws, self.depth, self.width, self.fourier)

    def as_dict(self) -> dict[str, Any]:
        return {
            "sigma": self.sigma,
            "num_ws": self.num_ws,
            "depth": self.depth,
            "width": self.width,
            "arch_seed": self.arch_seed,
            "palette": self.palette,
            "fourier": self.fourier,
            "autocast": self.autocast,
        }


def _int_setting(source: str, key: str, value: Any, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise GeneratorUnavailable(f"{source}: {key} must be an integer in {lo}..{hi}; got {value!r}")
    if not lo <= value <= hi:
        raise GeneratorUnavailable(f"{source}: {key} must be in {lo}..{hi}; got {value}")
    return value


def parse_settings(values: Mapping[str, Any], source: str = "generator 'default'") -> Settings:
    """Validate ``values`` (missing keys take :data:`DEFAULTS`) into :class:`Settings`.

    Errors name ``source``, the key and the allowed values.
    """
    merged = {**DEFAULTS, **{k: v for k, v in values.items() if k in DEFAULTS}}
    sigma = merged["sigma"]
    if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not math.isfinite(sigma):
        raise GeneratorUnavailable(f"{source}: sigma must be a finite number in 0..20; got {sigma!r}")
    if not 0.0 <= float(sigma) <= 20.0:
        raise GeneratorUnavailable(f"{source}: sigma must be in 0..20; got {sigma}")
    palette = merged["palette"]
    if palette not in PALETTES:
        raise GeneratorUnavailable(f"{source}: palette must be one of {', '.join(PALETTES)}; got {palette!r}")
    return Settings(
        sigma=float(sigma),
        num_ws=_int_setting(source, "num_ws", merged["num_ws"], 1, 64),
        depth=_int_setting(source, "depth", merged["depth"], 1, 16),
        width=_int_setting(source, "width", merged["width"], 4, 256),
        arch_seed=_int_setting(source, "arch_seed", merged["arch_seed"], 0, 2**63 - 1),
        palette=palette,
        fourier=_int_setting(source, "fourier", merged["fourier"], 0, 64),
        autocast=_bool_setting(source, "autocast", merged["autocast"]),
    )


def _bool_setting(source: str, key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise GeneratorUnavailable(f"{source}: {key} must be true or false; got {value!r}")
    return value


def _check_unknown(settings: Mapping[str, Any]) -> None:
    unknown = sorted(set(settings) - set(DEFAULTS) - _PASSTHROUGH_KEYS)
    if unknown:
        raise GeneratorUnavailable(
            f"generator 'default': unknown setting(s) {', '.join(map(repr, unknown))}; "
            f"allowed: {', '.join(sorted(DEFAULTS))}"
        )


# ----------------------------------------------------------------------------- network


@dataclass
class _Layer:
    weight: torch.Tensor  # (out, in)
    bias: torch.Tensor  # (out,)
    scale_affine: torch.Tensor  # (k * W_DIM, in): style -> per-input scale
    shift_affine: torch.Tensor  # (k * W_DIM, out): style -> per-output shift
    ws: tuple[int, ...]  # which rows of the W+ latent this layer reads


@dataclass
class PatternNet:
    """A randomly initialised CPPN; all tensors live on one device in float32."""

    coord_affine: torch.Tensor  # (W_DIM, 8): ws[0] -> coordinate transform (see _coord_transform)
    freqs: torch.Tensor  # (2, fourier) fixed sinusoidal input features
    phases: torch.Tensor  # (fourier,)
    layers: list[_Layer]
    in_features: int

    def to(self, device: torch.device) -> "PatternNet":
        def mv(t: torch.Tensor) -> torch.Tensor:
            return t.to(device)

        return PatternNet(
            coord_affine=mv(self.coord_affine),
            freqs=mv(self.freqs),
            phases=mv(self.phases),
            layers=[
                _Layer(mv(l.weight), mv(l.bias), mv(l.scale_affine), mv(l.shift_affine), l.ws) for l in self.layers
            ],
            in_features=self.in_features,
        )


def _assign_ws(num_ws: int, n_layers: int) -> list[tuple[int, ...]]:
    """Split W+ rows 1.. over the layers in order, coarse (early rows) to fine (late rows).

    Row 0 drives the coordinate transform.  With too few rows, layers share them.
    """
    first = 1 if num_ws > 1 else 0
    rows = num_ws - first
    if rows >= n_layers:
        bounds = [first + round(i * rows / n_layers) for i in range(n_layers + 1)]
        return [tuple(range(bounds[i], bounds[i + 1])) for i in range(n_layers)]
    return [(first + min(rows - 1, i * rows // n_layers),) for i in range(n_layers)]


def build_network(settings: Settings) -> PatternNet:
    """Build the network for ``settings`` on the CPU from ``arch_seed`` alone."""
    gen = torch.Generator(device="cpu").manual_seed(settings.arch_seed)
    f = settings.fourier
    coord_affine = torch.randn(W_DIM, 8, generator=gen) / math.sqrt(W_DIM)
    freqs = torch.randn(2, f, generator=gen) * FOURIER_SCALE
    phases = torch.rand(f, generator=gen) * (2 * math.pi)
    in_features = 3 + 2 * f
    dims = [in_features] + [settings.width] * settings.depth + [3]
    n_layers = len(dims) - 1
    ws_per_layer = _assign_ws(settings.num_ws, n_layers)
    layers = []
    for i in range(n_layers):
        fan_in, fan_out = dims[i], dims[i + 1]
        gain = 1.0 if i == n_layers - 1 else HIDDEN_GAIN
        weight = torch.randn(fan_out, fan_in, generator=gen) * (gain / math.sqrt(fan_in))
        bias = torch.randn(fan_out, generator=gen) * 0.5
        k = len(ws_per_layer[i]) * W_DIM
        # unit-variance styles per unit of sigma, whatever the number of rows read
        scale_affine = torch.randn(k, fan_in, generator=gen) / math.sqrt(k)
        shift_affine = torch.randn(k, fan_out, generator=gen) * (0.5 / math.sqrt(k))
        layers.append(_Layer(weight, bias, scale_affine, shift_affine, ws_per_layer[i]))
    return PatternNet(coord_affine=coord_affine, freqs=freqs, phases=phases, layers=layers, in_features=in_features)


def sample_ws(seed: int, num_ws: int, sigma: float) -> torch.Tensor:
    """The W+ latent for ``seed``: ``N(0, I) * sigma`` of shape ``(num_ws, 512)``, drawn on the CPU."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    return torch.randn(num_ws, W_DIM, generator=gen) * sigma


def _coord_transform(net: PatternNet, w0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A 2x2 matrix and an offset for the pixel coordinates, from W+ row 0.

    The row's direction (independent of sigma) rotates and shifts the plane; its
    length (proportional to sigma) zooms out and shears it, so larger sigma shows
    more of the pattern at once: finer, busier structure.
    """
    proj = w0 @ net.coord_affine  # (8,), each ~ N(0, sigma^2)
    norm = torch.linalg.vector_norm(proj)
    unit = proj / norm if float(norm) > 0 else torch.zeros_like(proj)
    theta = torch.atan2(unit[0], unit[1])
    c, s = torch.cos(theta), torch.sin(theta)
    rot = torch.stack((torch.stack((c, -s)), torch.stack((s, c))))
    zoom = BASE_ZOOM + ZOOM_GAIN * proj[2].abs()
    k = SHEAR_GAIN * proj[3]
    stretch = zoom * torch.stack(
        (torch.stack((torch.exp(k), SHEAR_GAIN * proj[4])), torch.stack((SHEAR_GAIN * proj[5], torch.exp(-k))))
    )
    offset = unit[6:8] * OFFSET_GAIN
    return rot @ stretch, offset


def _modulate(net: PatternNet, ws: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Fold each layer's style into its weights: ``W' = W * (1 + s)``, ``b' = b + t``.

    Rows are then partly demodulated (StyleGAN divides by the row norm; here by its
    square root), so the styles' growth with sigma shows without blowing up later layers.
    The affine part of the previous layer's activations (see :data:`_ACT_AFFINE`) is
    folded in too, so the per-pixel work is one ``addmm`` and one in-place function per
    feature block.  Returns per layer the weight (out, in) and the bias (out, 1).
    """
    out = []
    post_mult: torch.Tensor | None = None
    post_add: torch.Tensor | None = None
    for layer in net.layers:
        w = ws[list(layer.ws)].reshape(-1)
        scale = 1.0 + w @ layer.scale_affine
        shift = w @ layer.shift_affine
        weight = layer.weight * scale
        n0 = torch.linalg.vector_norm(layer.weight, dim=1, keepdim=True)
        n1 = torch.linalg.vector_norm(weight, dim=1, keepdim=True).clamp_min(1e-8)
        weight = weight * (n0 / n1) ** DEMOD
        bias = layer.bias + shift
        if post_mult is not None and post_add is not None:
            bias = bias + weight @ post_add
            weight = weight * post_mult
        if len(out) < len(net.layers) - 1:  # a hidden layer: its activations' input scale rides on its rows
            pre = _activation_prescale(weight.shape[0], weight.device)
            weight = weight * pre.unsqueeze(1)
            bias = bias * pre
        out.append((weight.contiguous(), bias.unsqueeze(1).contiguous()))
        post_mult, post_add = _activation_affine(weight.shape[0], weight.device)
    return out


# Each activation is f(x) followed by an affine a * f + c that centres its range;
# the affine is folded into the next layer's weights.
_ACT_AFFINE = {"sin": (1.0, 0.0), "tanh": (1.0, 0.0), "gauss": (2.0, -1.0), "abs": (1.0, -0.8)}


def _blocks(n: int) -> list[tuple[str, int, int]]:
    """The activation of each contiguous block of ``n`` hidden features."""
    k = len(_ACTIVATIONS)
    bounds = [round(i * n / k) for i in range(k + 1)]
    return [(name, bounds[i], bounds[i + 1]) for i, name in enumerate(_ACTIVATIONS)]


# How the fast path computes an activation: f(x) = post_mult * g(pre * x) + post_add, with g the in-place
# function of :func:`_activate`; ``pre`` is folded into the layer's rows, the post-affine (times the centring
# affine above) into the next layer.  tanh runs as 2 * sigmoid(2x) - 1: the same function, and sigmoid is
# several times cheaper than tanh on the CPU (tanh was a quarter of a render).
_FAST_FORM = {"sin": (1.0, 1.0, 0.0), "tanh": (2.0, 2.0, -1.0), "gauss": (1.0, 1.0, 0.0), "abs": (1.0, 1.0, 0.0)}


def _activation_prescale(n: int, device: torch.device) -> torch.Tensor:
    pre = torch.ones(n, device=device)
    for name, a, b in _blocks(n):
        pre[a:b] = _FAST_FORM[name][0]
    return pre


def _activation_affine(n: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Per feature, the affine after the fast path's in-place function: the centring affine of
    :data:`_ACT_AFFINE` composed with the post-affine of :data:`_FAST_FORM`."""
    mult = torch.ones(n, device=device)
    add = torch.zeros(n, device=device)
    for name, a, b in _blocks(n):
        m, c = _ACT_AFFINE[name]
        _, fm, fc = _FAST_FORM[name]
        mult[a:b], add[a:b] = m * fm, m * fc + c
    return mult, add


def _activate(h: torch.Tensor) -> torch.Tensor:
    """Mixed activations in place on a feature-major (features, pixels) block, in their fast forms."""
    for name, a, b in _blocks(h.shape[0]):
        part = h[a:b]  # contiguous rows
        if name == "sin":
            part.sin_()
        elif name == "tanh":
            part.sigmoid_()  # tanh, in its fast form (see _FAST_FORM)
        elif name == "gauss":
            part.square_().neg_().exp_()
        else:
            part.abs_()
    return h


def _grid(width: int, height: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel-centre coordinates with the shorter side spanning -1..1 (aspect kept)."""
    short = min(width, height)
    xs = (torch.arange(width, device=device, dtype=torch.float32) + 0.5 - width / 2) * (2.0 / short)
    ys = (torch.arange(height, device=device, dtype=torch.float32) + 0.5 - height / 2) * (2.0 / short)
    return xs, ys


def _features(net: PatternNet, x: torch.Tensor, y: torch.Tensor, mat: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
    """Input features, feature-major: (3 + 2 * fourier, pixels) = u, v, r, sin, cos."""
    f = net.freqs.shape[1]
    feats = torch.empty(3 + 2 * f, x.shape[0], dtype=torch.float32, device=x.device)
    uv = mat @ torch.stack((x, y)) + offset.unsqueeze(1)
    feats[0:2] = uv
    torch.hypot(uv[0], uv[1], out=feats[2])
    if f:
        proj = torch.addmm(net.phases.unsqueeze(1), net.freqs.t(), uv)
        torch.sin(proj, out=feats[3 : 3 + f])
        torch.cos(proj, out=feats[3 + f :])
    return feats


def forward(net: PatternNet, ws: torch.Tensor, width: int, height: int, chunk: int = CHUNK_PIXELS) -> torch.Tensor:
    """Raw network outputs, float32 of shape (height * width, 3), row-major.

    Works on blocks of whole image rows so memory stays bounded at any size; inside a
    block features are the leading dimension, so each activation runs on contiguous memory.
    Matrix products follow any autocast in effect; activations always run in float32.
    """
    device = net.freqs.device
    ws = ws.to(device=device, dtype=torch.float32)
    mat, offset = _coord_transform(net, ws[0])
    mods = _modulate(net, ws)
    xs, ys = _grid(width, height, device)
    out = torch.empty(3, width * height, dtype=torch.float32, device=device)
    rows_per_chunk = max(1, chunk // width)
    for y0 in range(0, height, rows_per_chunk):
        y1 = min(height, y0 + rows_per_chunk)
        yy = ys[y0:y1].repeat_interleave(width)
        xx = xs.repeat(y1 - y0)
        h = _features(net, xx, yy, mat, offset)
        for i, (weight, bias) in enumerate(mods):
            h = torch.addmm(bias, weight, h).float()
            if i < len(mods) - 1:
                h = _activate(h)
        out[:, y0 * width : y1 * width] = h
    return out.t()


def reference_forward(net: PatternNet, ws: torch.Tensor, width: int, height: int) -> Any:
    """The same network written plainly in NumPy, one image row at a time.

    Styles are applied to the inputs, activations keep their affine, nothing is
    folded or fused.  It is the specification the fast :func:`forward` is tested
    against and the baseline the benchmark compares with; returns (height * width, 3).
    """
    import numpy as np

    ws_np = ws.detach().to("cpu", torch.float64).numpy()
    mat, offset = (t.detach().to("cpu", torch.float64).numpy() for t in _coord_transform(net.to(torch.device("cpu")), ws.float().cpu()[0]))
    freqs = net.freqs.detach().cpu().double().numpy()
    phases = net.phases.detach().cpu().double().numpy()
    short = min(width, height)
    xs = (np.arange(width) + 0.5 - width / 2) * (2.0 / short)
    out = np.empty((height * width, 3))
    styles = []
    for layer in net.layers:
        w = ws_np[list(layer.ws)].reshape(-1)
        weight = layer.weight.cpu().double().numpy()
        scale = 1.0 + w @ layer.scale_affine.cpu().double().numpy()
        shift = w @ layer.shift_affine.cpu().double().numpy()
        n0 = np.linalg.norm(weight, axis=1, keepdims=True)
        n1 = np.maximum(np.linalg.norm(weight * scale, axis=1, keepdims=True), 1e-8)
        styles.append((weight * (n0 / n1) ** DEMOD, scale, layer.bias.cpu().double().numpy() + shift))
    for row in range(height):
        y = (row + 0.5 - height / 2) * (2.0 / short)
        xy = np.stack((xs, np.full(width, y)), axis=1)
        uv = xy @ mat.T + offset
        r = np.sqrt(uv[:, 0] ** 2 + uv[:, 1] ** 2)[:, None]
        proj = uv @ freqs + phases
        h = np.concatenate((uv, r, np.sin(proj), np.cos(proj)), axis=1)
        for i, (weight, scale, bias) in enumerate(styles):
            h = (h * scale) @ weight.T + bias
            if i < len(styles) - 1:
                for name, a, b in _blocks(h.shape[1]):
                    mult, add = _ACT_AFFINE[name]
                    f = {"sin": np.sin, "tanh": np.tanh, "gauss": lambda v: np.exp(-v * v), "abs": np.abs}[name]
                    h[:, a:b] = mult * f(h[:, a:b]) + add
        out[row * width : (row + 1) * width] = h
    return out


# ----------------------------------------------------------------------------- colour


def _palette_params(seed: int) -> torch.Tensor:
    """Per-seed palette parameters, from a stream separate from the latent's."""
    gen = torch.Generator(device="cpu").manual_seed((seed * 0x9E3779B97F4A7C15 + 0x5EED) % 2**63)
    return torch.rand(16, generator=gen, dtype=torch.float64).float()


def _normalise(v: torch.Tensor) -> torch.Tensor:
    return (v - v.mean()) / (v.std() + 1e-6)


def colourise(raw: torch.Tensor, seed: int, palette: str) -> torch.Tensor:
    """Map raw outputs (N, 3) to RGB in 0..1 (N, 3).

    Output 0 walks along the palette, output 1 shades, output 2 blends towards a
    second, phase-shifted palette.  Outputs are standardised over the whole image
    first, so a calm picture still spans its palette rather than collapsing to grey.
    The work runs channel-major, (3, N), where every pass is a contiguous stream (the
    :func:`forward` output is such a buffer seen transposed); the result is its transposed view.
    """
    p = _palette_params(seed)
    chans = raw.t()
    t = _normalise(chans[0])
    shade = torch.sigmoid(_normalise(chans[1]) * 1.5)
    mix = torch.sigmoid(_normalise(chans[2]) * 2.0)
    if palette == "hsv":
        hue = (t * (0.15 + 0.35 * p[0]) + p[1]) % 1.0
        sat = 0.55 + 0.45 * mix
        val = 0.25 + 0.75 * shade
        rgb = _hsv_to_rgb(hue, sat, val)
    else:
        rgb = _cosine_palette(t, p[0:8])
        p2 = p[0:8].clone()
        p2[6] = p[6] + 0.2 + 0.3 * p[8]  # the same palette, turned part way round
        rgb.lerp_(_cosine_palette(t * (0.6 + 0.8 * p[9]), p2), mix)
        rgb.mul_(shade.mul_(0.7).add_(0.3))
    return rgb.clamp_(0.0, 1.0).t()


def _cosine_palette(t: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """``a + b * cos(2 pi (c t + d))`` with one shared frequency ``c``, so colours stay related; (3, N).

    The phase spread between channels decides how many hues appear: a small spread
    gives a duotone, a wide one a rainbow.
    """
    spread = 0.04 + 0.3 * p[5]
    # a narrow spread gives few hues, so it gets a stronger tint to stay colourful
    tint = (p[0:3] - 0.5) * (0.3 + 0.5 * (0.34 - spread))
    a = 0.5 + tint
    b = 0.38 + 0.14 * p[3]
    c = 0.3 + 0.45 * p[4]
    d = p[6] + spread * torch.tensor([0.0, 1.0, 2.0], device=t.device) * (1.0 if p[7] < 0.5 else -1.0)
    arg = (c * t).unsqueeze(0) + d.unsqueeze(1)
    return arg.mul_(2 * math.pi).cos_().mul_(b).add_(a.unsqueeze(1))


def _hsv_to_rgb(h: torch.Tensor, s: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """HSV (each (N,)) to RGB, channel-major (3, N)."""
    k = torch.tensor([5.0, 3.0, 1.0], device=h.device)
    kk = (h.unsqueeze(0) * 6.0 + k.unsqueeze(1)) % 6.0
    f = torch.clamp(torch.minimum(kk, 4.0 - kk), 0.0, 1.0)
    return v.unsqueeze(0) * (1 - s.unsqueeze(0) * f)


def to_image(rgb: torch.Tensor, width: int, height: int) -> Any:
    from PIL import Image

    arr = rgb.mul(255.0).add_(0.5).clamp_(0, 255).to(torch.uint8).reshape(height, width, 3).cpu().numpy()
    return Image.fromarray(arr, mode="RGB")


# ----------------------------------------------------------------------------- generator


class DefaultGenerator:
    """Renders requests with a pattern network cached per architecture."""

    name = NAME
    label = LABEL

    def __init__(self, settings: Mapping[str, Any], ctx: RenderContext) -> None:
        _check_unknown(settings)
        self.settings = parse_settings(settings, "generator 'default' settings")
        self._raw_settings = dict(settings)
        self.device = torch.device(ctx.device) if ctx.device is not None else torch.device("cpu")
        self._nets: dict[tuple, PatternNet] = {}
        self._warm_up()

    def _warm_up(self) -> None:
        """Build the exhibit's network and run a render's kernels once on a small picture.

        The worker builds its generators at start-up, so a visitor's first tap finds the network
        made and torch's kernels, thread pool and heap primed for a picture of
        :data:`WARM_UP_SIDE` (the heap grown to a render's buffers rather than fresh pages on
        the first tap): at 512 px the first picture otherwise took 1.5-2x as long as the next.
        """
        net = self._net(self.settings)
        side = WARM_UP_SIDE
        with torch.inference_mode(), _torch_threads(RENDER_THREADS if self.device.type == "cpu" else 0):
            raw = forward(net, sample_ws(0, self.settings.num_ws, self.settings.sigma), side, side)
            to_image(colourise(torch.nan_to_num(raw), 0, self.settings.palette), side, side)

    def _net(self, s: Settings) -> PatternNet:
        key = s.arch_key()
        net = self._nets.get(key)
        if net is None:
            if len(self._nets) >= 4:
                self._nets.pop(next(iter(self._nets)))
            net = build_network(s).to(self.device)
            self._nets[key] = net
        return net

    def effective_settings(self, req: RenderRequest) -> Settings:
        """Settings for one request: the request's params override the generator's table."""
        merged = {**self._raw_settings, **{k: v for k, v in req.params.items() if k in DEFAULTS}}
        return parse_settings(merged, f"job {req.job_id} params for generator 'default'")

    def render(self, req: RenderRequest, ctx: RenderContext) -> RenderResult:
        _check_size(req)
        if isinstance(req.seed, bool) or not isinstance(req.seed, int) or not 0 <= req.seed < 2**63:
            raise GeneratorUnavailable(f"job {req.job_id}: seed must be an integer in 0..2**63-1; got {req.seed!r}")
        s = self.effective_settings(req)
        if ctx.should_stop():
            raise RenderCancelled(f"job {req.job_id} cancelled before rendering")
        ctx.progress({"step": 0, "total": 1})
        started = time.perf_counter()
        net = self._net(s)
        ws = sample_ws(req.seed, s.num_ws, s.sigma)
        device = net.freqs.device
        dtype = ctx.dtype
        use_autocast = s.autocast and dtype is not None and dtype != torch.float32 and device.type in ("cpu", "cuda")
        with torch.inference_mode(), _torch_threads(RENDER_THREADS if device.type == "cpu" else 0):
            if use_autocast:
                with torch.autocast(device_type=device.type, dtype=dtype):
                    raw = forward(net, ws, req.width, req.height)
            else:
                raw = forward(net, ws, req.width, req.height)
            raw = torch.nan_to_num(raw, nan=0.0, posinf=0.0, neginf=0.0)
            rgb = colourise(raw, req.seed, s.palette)
            image = to_image(rgb, req.width, req.height)
        elapsed = time.perf_counter() - started
        ctx.progress({"step": 1, "total": 1, "image": image})
        log.debug("default: %dx%d seed=%d sigma=%.3g in %.3fs", req.width, req.height, req.seed, s.sigma, elapsed)
        params = s.as_dict()
        meta = {
            "generator": NAME,
            "label": LABEL,
            "seed": req.seed,
            "sigma": s.sigma,
            "num_ws": s.num_ws,
            "arch_seed": s.arch_seed,
            "params": params,
            "models": {},
            "width": req.width,
            "height": req.height,
            "autocast": str(dtype).replace("torch.", "") if use_autocast else "float32",
        }
        return RenderResult(image=image, meta=meta)


@contextlib.contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    """Run with ``n`` torch intra-op threads (0: leave as is), then restore the worker's setting."""
    before = torch.get_num_threads()
    if n <= 0 or n == before:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _check_size(req: RenderRequest) -> None:
    for key in ("width", "height"):
        value = getattr(req, key)
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_SIDE:
            raise GeneratorUnavailable(f"job {req.job_id}: {key} must be an integer in 1..{MAX_SIDE}; got {value!r}")


@register(NAME)
def make_default(settings: Mapping[str, Any], ctx: RenderContext) -> DefaultGenerator:
    return DefaultGenerator(settings, ctx)


# ----------------------------------------------------------------------------- contact sheet


def contact_sheet(
    seeds: tuple[int, ...] = (1, 2, 3, 4, 5, 6),
    sigmas: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0, 3.0),
    tile: int = 192,
    settings: Mapping[str, Any] | None = None,
) -> Any:
    """A labelled grid: one row per seed, one column per sigma."""
    from PIL import Image, ImageDraw, ImageFont

    ctx = RenderContext(device=torch.device("cpu"), dtype=None, weights_dir=None, work_dir=None)  # type: ignore[arg-type]
    gen = DefaultGenerator(settings or {}, ctx)
    pad, head, side = 8, 34, 84
    w = side + len(sigmas) * (tile + pad) + pad
    h = head + len(seeds) * (tile + pad) + pad + 26
    sheet = Image.new("RGB", (w, h), (18, 18, 22))
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default(size=15)
    small = ImageFont.load_default(size=12)
    for j, sigma in enumerate(sigmas):
        x = side + j * (tile + pad)
        draw.text((x + tile / 2, head / 2 + 2), f"sigma {sigma:g}", fill=(230, 230, 235), font=font, anchor="mm")
    for i, seed in enumerate(seeds):
        y = head + i * (tile + pad)
        draw.text((side / 2, y + tile / 2), f"seed {seed}", fill=(230, 230, 235), font=font, anchor="mm")
        for j, sigma in enumerate(sigmas):
            x = side + j * (tile + pad)
            req = RenderRequest(job_id=0, exhibit="demo", generator=NAME, prompts=(), seed=seed,
                                width=tile, height=tile, params={"sigma": sigma})
            sheet.paste(gen.render(req, ctx).image, (x, y))
    s = gen.settings
    caption = (f"{LABEL}: W+ latent ({s.num_ws} x 512) ~ N(0, I) * sigma;"
               f" depth {s.depth}, width {s.width}, arch_seed {s.arch_seed}")
    draw.text((w / 2, h - 16), caption, fill=(150, 150, 160), font=small, anchor="mm")
    return sheet


def main(argv: list[str] | None = None) -> int:
    """``python -m renderer.generators.default sheet OUT.png``: write the sigma contact sheet."""
    import argparse

    from exhibits.files import atomic_path

    parser = argparse.ArgumentParser(prog="python -m renderer.generators.default")
    sub = parser.add_subparsers(dest="command", required=True)
    p_sheet = sub.add_parser("sheet", help="write a seeds x sigmas contact sheet")
    p_sheet.add_argument("out")
    p_sheet.add_argument("--tile", type=int, default=192)
    args = parser.parse_args(argv)
    sheet = contact_sheet(tile=args.tile)
    with atomic_path(args.out) as tmp:
        sheet.save(tmp, format="PNG", optimize=True)
        tmp.chmod(0o644)  # a picture for the docs, readable by everyone
    log.info("wrote %s", args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
