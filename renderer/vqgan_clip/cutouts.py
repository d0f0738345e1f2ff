"""Batched random cutouts with tracked positions, mirrored pairs, and batched augmentations.

All cutouts of a step come from one ``torchvision.ops.roi_align`` call (area
sampled, differentiable) and one batched affine warp, never a per-cutout loop.
Randomness comes only from the ``torch.Generator`` passed in, so a run is
reproducible and resumable from that generator's state.

Mirrored pairs (for semantic symmetry): cutout ``2k`` is a square at ``x`` and
cutout ``2k+1`` the square at ``W - x - size`` (same ``y``), flipped
horizontally, so on a left-right symmetric image both crops are identical; the
pair shares one draw of augmentation parameters, so they stay identical after
augmentation too.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class AugmentConfig:
    rotate_deg: float = 10.0
    shear: float = 0.1
    translate: float = 0.05
    scale: float = 0.1
    blur_p: float = 0.3
    blur_sigma: float = 1.0
    jitter: float = 0.1  # brightness / contrast / saturation amplitude
    flip_p: float = 0.5
    noise: float = 0.05  # classic per-cutout noise amplitude


@dataclass
class Boxes:
    """Where the cutouts are: pixels of the source image, one row per cutout."""

    x0: torch.Tensor
    y0: torch.Tensor
    size: torch.Tensor
    flip: torch.Tensor  # bool: cutout is the mirrored member of a pair
    n_pairs: int  # the first 2*n_pairs cutouts are mirrored pairs (2k, 2k+1)
    width: int
    height: int

    @property
    def x_centre(self) -> torch.Tensor:
        """Centre of each cutout as a fraction of the image width, in [0, 1]."""
        return (self.x0 + self.size / 2) / self.width

    def __len__(self) -> int:
        return int(self.size.shape[0])


def cut_sizes(n: int, width: int, height: int, cut_size: int, cut_pow: float,
              generator: torch.Generator) -> torch.Tensor:
    """Square sizes ``rand**cut_pow * (max - min) + min``: cut_pow < 1 favours large patches, > 1 small ones."""
    max_size = min(width, height)
    min_size = min(width, height, cut_size)
    r = torch.rand(n, generator=generator, dtype=torch.float64)
    return (r.pow(cut_pow) * (max_size - min_size) + min_size).floor().clamp(min_size, max_size)


def sample_boxes(n: int, width: int, height: int, cut_size: int, cut_pow: float,
                 generator: torch.Generator, mirror_pairs: int = 0) -> Boxes:
    """``n`` square boxes; the first ``2*mirror_pairs`` are mirrored pairs."""
    mirror_pairs = max(0, min(int(mirror_pairs), n // 2))
    sizes = cut_sizes(n, width, height, cut_size, cut_pow, generator)
    u = torch.rand(n, generator=generator, dtype=torch.float64)
    v = torch.rand(n, generator=generator, dtype=torch.float64)
    x0 = (u * (width - sizes + 1)).floor().clamp(min=0)
    y0 = (v * (height - sizes + 1)).floor().clamp(min=0)
    flip = torch.zeros(n, dtype=torch.bool)
    if mirror_pairs:
        a = torch.arange(mirror_pairs) * 2
        b = a + 1
        sizes[b] = sizes[a]
        y0[b] = y0[a]
        x0[b] = width - x0[a] - sizes[a]
        flip[b] = True
    return Boxes(x0=x0, y0=y0, size=sizes, flip=flip, n_pairs=mirror_pairs, width=width, height=height)


def crop_resize(image: torch.Tensor, boxes: Boxes, out_size: int) -> torch.Tensor:
    """All cutouts of ``image`` (1, C, H, W) resized to ``out_size``; pairs flipped.

    On CUDA: one ``roi_align`` call.  Elsewhere: a slice and an area pool per cutout (:class:`_PooledCrops`),
    because torchvision's CPU ``roi_align`` backward runs on one thread and took 4-5x longer than the
    per-crop pooling (forward+backward, 32-64 cutouts of 512x256 to 1536x768 canvases;
    benchmarks/bench_doorways.py).
    """
    if image.device.type != "cuda":
        return _PooledCrops.apply(image, boxes, out_size)
    return crop_resize_roi(image, boxes, out_size)


def _pool(crop: torch.Tensor, out_size: int) -> torch.Tensor:
    """The classic resize of one crop: area average when shrinking, bilinear when enlarging."""
    if crop.shape[-1] >= out_size:
        return F.adaptive_avg_pool2d(crop, out_size)
    return F.interpolate(crop, size=(out_size, out_size), mode="bilinear", align_corners=False)


class _PooledCrops(torch.autograd.Function):
    """:func:`per_cutout_reference` with a backward that adds each crop's gradient into one image-sized buffer.

    Through autograd, every slice's backward makes an image-sized zero tensor and the engine adds them up:
    with 64 cutouts of a 1024x512 canvas that was a fifth of the whole cutout stage.  Forward values are
    those of :func:`per_cutout_reference`, gradients the same sums in another order.
    """

    @staticmethod
    def forward(ctx: Any, image: torch.Tensor, boxes: Boxes, out_size: int) -> torch.Tensor:
        rows = [(int(x0), int(y0), int(s), bool(f)) for x0, y0, s, f in
                zip(boxes.x0.tolist(), boxes.y0.tolist(), boxes.size.tolist(), boxes.flip.tolist())]
        ctx.rows, ctx.out_size, ctx.shape = rows, out_size, image.shape
        out = image.new_empty((len(rows), image.shape[1], out_size, out_size))
        for i, (x0, y0, s, flip) in enumerate(rows):
            crop = _pool(image[:, :, y0:y0 + s, x0:x0 + s], out_size)
            out[i:i + 1] = crop.flip(-1) if flip else crop
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, None, None]:
        if not ctx.needs_input_grad[0]:
            return None, None, None
        n, c, size, _ = grad.shape
        g_img = grad.new_zeros(ctx.shape)
        for i, (x0, y0, s, flip) in enumerate(ctx.rows):
            g = grad[i:i + 1]
            if flip:
                g = g.flip(-1)
            if s >= size:
                gc = torch.ops.aten._adaptive_avg_pool2d_backward(g.contiguous(), grad.new_empty((1, c, s, s)))
            else:
                gc = torch.ops.aten.upsample_bilinear2d_backward(g.contiguous(), [size, size], [1, c, s, s], False)
            g_img[:, :, y0:y0 + s, x0:x0 + s] += gc
        return g_img, None, None


def crop_resize_roi(image: torch.Tensor, boxes: Boxes, out_size: int) -> torch.Tensor:
    """The CUDA path of :func:`crop_resize`: all cutouts in one ``roi_align`` call (runs on any device)."""
    from torchvision.ops import roi_align

    dev = image.device
    x0 = boxes.x0.to(dev, torch.float32)
    y0 = boxes.y0.to(dev, torch.float32)
    s = boxes.size.to(dev, torch.float32)
    rois = torch.stack([torch.zeros_like(x0), x0, y0, x0 + s, y0 + s], 1).to(image.dtype)
    # sampling_ratio: enough taps per output bin to average the whole area (anti-aliased downscale)
    ratio = max(1, math.ceil(float(s.max()) / out_size))
    out = roi_align(image, rois, output_size=(out_size, out_size), spatial_scale=1.0,
                    sampling_ratio=ratio, aligned=True)
    flip = boxes.flip.to(dev)
    if bool(flip.any()):
        out = torch.where(flip[:, None, None, None], out.flip(-1), out)
    return out


@dataclass
class AugmentParams:
    """One random draw of augmentation parameters for a batch of cutouts (mirrored for pair members)."""

    angle: torch.Tensor  # degrees
    shear: torch.Tensor
    scale: torch.Tensor
    tx: torch.Tensor  # fraction of the cutout size
    ty: torch.Tensor
    flip: torch.Tensor
    blur: torch.Tensor  # sigma, 0 = none
    bright: torch.Tensor
    contrast: torch.Tensor
    sat: torch.Tensor
    noise: torch.Tensor  # per-cutout noise amplitude
    noise_seed: int


def sample_augment(boxes: Boxes, cfg: AugmentConfig, generator: torch.Generator) -> AugmentParams:
    n = len(boxes)

    def uni(lo: float, hi: float) -> torch.Tensor:
        return torch.rand(n, generator=generator) * (hi - lo) + lo

    p = AugmentParams(
        angle=uni(-cfg.rotate_deg, cfg.rotate_deg), shear=uni(-cfg.shear, cfg.shear),
        scale=uni(1 - cfg.scale, 1 + cfg.scale), tx=uni(-cfg.translate, cfg.translate),
        ty=uni(-cfg.translate, cfg.translate), flip=torch.rand(n, generator=generator) < cfg.flip_p,
        blur=torch.where(torch.rand(n, generator=generator) < cfg.blur_p, uni(0.1, cfg.blur_sigma),
                         torch.zeros(n)),
        bright=uni(-cfg.jitter, cfg.jitter), contrast=uni(1 - cfg.jitter, 1 + cfg.jitter),
        sat=uni(1 - cfg.jitter, 1 + cfg.jitter), noise=torch.rand(n, generator=generator) * cfg.noise,
        noise_seed=int(torch.randint(0, 2**62, (1,), generator=generator)),
    )
    if boxes.n_pairs:
        a = torch.arange(boxes.n_pairs) * 2
        b = a + 1
        for name in ("angle", "shear", "scale", "tx", "ty", "flip", "blur", "bright", "contrast", "sat", "noise"):
            t = getattr(p, name)
            t[b] = t[a]
    return p


def augment(x: torch.Tensor, p: AugmentParams, n_pairs: int = 0) -> torch.Tensor:
    """Apply ``p`` to the batch ``x`` (N, 3, S, S) in a handful of batched ops.

    In order: the affine warp (rotation, shear, scale, shift) with the horizontal flip folded into its matrix,
    a Gaussian blur on the cutouts drawn to have one (only those are computed), brightness, contrast and
    saturation as one 3x3 colour matrix per cutout, then noise.  The same picture as applying each
    augmentation in turn (tests/test_vqgan_losses.py keeps that version as the reference), in fewer passes
    over the batch, which is most of what the cutout stage costs on a CPU.
    """
    import kornia

    n, _, s, _ = x.shape
    dev, dt = x.device, x.dtype
    ang = p.angle.to(dev).mul(math.pi / 180)
    cos, sin = ang.cos(), ang.sin()
    sc = p.scale.to(dev)
    sh = p.shear.to(dev)
    # A = R(angle) @ Shear_x(shear) * scale about the centre, then a shift
    a11, a12 = cos * sc, (cos * sh - sin) * sc
    a21, a22 = sin * sc, (sin * sh + cos) * sc
    c = (s - 1) / 2
    tx = p.tx.to(dev) * s
    ty = p.ty.to(dev) * s
    row0 = torch.stack([a11, a12, c - a11 * c - a12 * c + tx], 1)
    # flipping the warped cutout left-right is x -> (s - 1) - x after the warp: fold it into the first row
    flip = p.flip.to(dev)
    row0 = torch.where(flip[:, None], torch.tensor([0.0, 0.0, s - 1.0], device=dev) - row0, row0)
    m = torch.stack([row0, torch.stack([a21, a22, c - a21 * c - a22 * c + ty], 1)], 1).to(dt)
    x = kornia.geometry.transform.warp_affine(x, m, (s, s), mode="bilinear", padding_mode="reflection",
                                              align_corners=True)
    blur = p.blur.to(dev)
    which = torch.nonzero(blur > 0).flatten()
    if which.numel():
        sig = blur.index_select(0, which).clamp(min=1e-3)[:, None].expand(-1, 2).to(dt)
        k = 2 * math.ceil(2 * float(blur.max())) + 1
        x = x.index_copy(0, which, kornia.filters.gaussian_blur2d(x.index_select(0, which), (k, k), sig))
    # contrast about the cutout's mean, brightness, then saturation towards grey (Rec. 601 weights):
    # out = sat*y + (1-sat)*grey(y), y = contrast*(x - mean) + mean + bright.  As the weights sum to 1 this is
    # contrast * K @ x + ((1 - contrast) * mean + bright), with K = sat*I + (1-sat) * 1 w^T.
    ct = p.contrast.to(dev, torch.float32)
    sat = p.sat.to(dev, torch.float32)
    w = torch.tensor([0.299, 0.587, 0.114], device=dev)
    k_mat = sat[:, None, None] * torch.eye(3, device=dev) + (1 - sat)[:, None, None] * w.expand(3, 3)
    k_mat = (ct[:, None, None] * k_mat).to(dt)
    mean = x.mean(dim=(1, 2, 3))
    offset = ((1 - p.contrast.to(dev, dt)) * mean + p.bright.to(dev, dt))[:, None, None]
    x = torch.baddbmm(offset, k_mat, x.reshape(n, 3, s * s)).reshape(n, 3, s, s)
    g = torch.Generator().manual_seed(p.noise_seed)
    half = torch.randn((n - n_pairs, 3, s, s), generator=g)
    noise = _pair_noise(half, n_pairs).to(dev, dt)
    x = torch.addcmul(x, noise, p.noise.to(dev, dt)[:, None, None, None])
    return x.clamp(0, 1)


def _pair_noise(noise: torch.Tensor, n_pairs: int) -> torch.Tensor:
    """Expand per-cutout noise so both members of a mirrored pair get the same noise."""
    if not n_pairs:
        return noise
    firsts = noise[:n_pairs]
    pairs = torch.stack([firsts, firsts], 1).reshape(2 * n_pairs, *noise.shape[1:])
    return torch.cat([pairs, noise[n_pairs:]], 0)


def make_cutouts(image: torch.Tensor, boxes: Boxes, out_size: int, aug: AugmentParams | None) -> torch.Tensor:
    """Crop, resize and (optionally) augment: the batch CLIP sees, in float32.

    This stage runs in float32 under any autocast.  On the CPU the pooling, warping and in-place adds run
    several times slower in bfloat16 than in float32 (64 cutouts of a 1024x512 canvas, forward and backward:
    4.3 s against about 1 s), and bfloat16 sampling positions are off by up to half a pixel at 224 px.  The
    image is one small tensor, the cutouts 38 MB; CLIP casts them to its own precision.
    """
    with torch.autocast(image.device.type, enabled=False):
        x = crop_resize(image.float(), boxes, out_size)
        if aug is not None:
            x = augment(x, aug, boxes.n_pairs)
    return x


def per_cutout_reference(image: torch.Tensor, boxes: Boxes, out_size: int) -> torch.Tensor:
    """A per-cutout loop of the classic kind (slice + adaptive pool + resize): the CPU path of
    :func:`crop_resize`, and the reference the CUDA path is tested against."""
    outs = []
    for i in range(len(boxes)):
        x0, y0, s = int(boxes.x0[i]), int(boxes.y0[i]), int(boxes.size[i])
        crop = image[:, :, y0:y0 + s, x0:x0 + s]
        crop = F.adaptive_avg_pool2d(crop, out_size) if s >= out_size else F.interpolate(
            crop, size=(out_size, out_size), mode="bilinear", align_corners=False)
        if bool(boxes.flip[i]):
            crop = crop.flip(-1)
        outs.append(crop)
    return torch.cat(outs)
