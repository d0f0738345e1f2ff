"""Cutouts, panorama weights and symmetry losses pull the right way."""
from __future__ import annotations

import math

import pytest
import torch

from renderer.vqgan_clip import cutouts as cut
from renderer.vqgan_clip.clip_guidance import load_clip, prompt_loss, semantic_symmetry_loss, spherical_dist
from renderer.vqgan_clip.losses import edge_symmetry, panorama_weights, prompt_position_weights, tone_symmetry


def test_panorama_weights_sum_to_one_and_interpolate():
    x = torch.linspace(0, 1, 41)
    for n in (2, 3, 4):
        for mode in ("linear", "cosine", "smoothstep"):
            w = panorama_weights(x, n, mode)
            assert torch.allclose(w.sum(1), torch.ones(41))
            assert torch.allclose(w[0], torch.eye(n)[0]) and torch.allclose(w[-1], torch.eye(n)[-1])
    two = panorama_weights(torch.tensor([0.25, 0.5]), 2, "linear")
    assert torch.allclose(two, torch.tensor([[0.75, 0.25], [0.5, 0.5]]))
    cos = panorama_weights(torch.tensor([0.25]), 2, "cosine")
    assert math.isclose(float(cos[0, 1]), (1 - math.cos(math.pi / 4)) / 2, rel_tol=1e-6)
    smooth = panorama_weights(torch.tensor([0.25]), 2, "smoothstep")
    assert math.isclose(float(smooth[0, 1]), 0.25 ** 2 * (3 - 0.5), rel_tol=1e-6)
    three = panorama_weights(torch.tensor([0.5, 0.75]), 3, "linear")  # left / centre / right
    assert torch.allclose(three, torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.5, 0.5]]))
    with pytest.raises(ValueError, match="allowed"):
        panorama_weights(x, 2, "wiggly")


def test_negative_prompts_apply_everywhere():
    w = prompt_position_weights(torch.tensor([0.0, 1.0]), torch.tensor([1.0, -0.5, 1.0]), "linear")
    assert torch.allclose(w, torch.tensor([[1.0, 1.0, 0.0], [0.0, 1.0, 1.0]]))


def test_boxes_mirror_and_crops_match_a_per_cutout_loop():
    g = torch.Generator().manual_seed(0)
    boxes = cut.sample_boxes(12, 64, 32, 8, 1.0, g, mirror_pairs=4)
    a, b = torch.arange(4) * 2, torch.arange(4) * 2 + 1
    assert torch.equal(boxes.x0[b], 64 - boxes.x0[a] - boxes.size[a]) and torch.equal(boxes.y0[a], boxes.y0[b])
    assert torch.allclose(boxes.x_centre[a] + boxes.x_centre[b], torch.ones(4, dtype=torch.float64))
    # equal sizes, a multiple of the output size: roi_align's area sampling equals average pooling exactly
    boxes.size = torch.full_like(boxes.size, 16)
    boxes.x0 = boxes.x0.clamp(max=64 - 16)
    boxes.x0[b] = 64 - boxes.x0[a] - boxes.size[a]
    boxes.y0 = boxes.y0.clamp(max=32 - boxes.size)
    img = torch.rand(1, 3, 32, 64)
    assert torch.allclose(cut.crop_resize_roi(img, boxes, 8), cut.per_cutout_reference(img, boxes, 8), atol=1e-5)


def test_mirrored_pairs_really_mirror_with_augmentations():
    g = torch.Generator().manual_seed(1)
    half = torch.rand(1, 3, 40, 40)
    img = torch.cat([half, half.flip(-1)], -1)  # left-right symmetric
    boxes = cut.sample_boxes(16, 80, 40, 16, 1.0, g, mirror_pairs=8)
    params = cut.sample_augment(boxes, cut.AugmentConfig(blur_p=0.5), g)
    out = cut.make_cutouts(img, boxes, 16, params)
    assert torch.allclose(out[0::2], out[1::2], atol=1e-4)
    assert not torch.allclose(out[0], out[2])


def _adam(param, loss_fn, steps=20, lr=0.05):
    opt = torch.optim.Adam([param], lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        loss_fn(param).backward()
        opt.step()
        with torch.no_grad():
            param.clamp_(0, 1)


def _flip_diff(img):
    return float((img - img.flip(-1)).abs().mean())


def _edge_flip_diff(img):
    import kornia

    e = kornia.filters.sobel(img.mean(1, keepdim=True))
    e = torch.nn.functional.avg_pool2d(e, 8)
    return float((e - e.flip(-1)).abs().mean())


@pytest.mark.parametrize("loss,measure", [(tone_symmetry, _flip_diff), (edge_symmetry, _edge_flip_diff)])
def test_symmetry_losses_make_the_image_more_symmetric(loss, measure):
    torch.manual_seed(0)
    img = torch.zeros(1, 3, 32, 48)
    img[..., 4:14, 4:20] = 1.0  # a bright block on the left only
    img = (img + 0.05 * torch.rand_like(img)).clamp(0, 1).requires_grad_(True)
    before_loss, before_diff = float(loss(img.detach())), measure(img.detach())
    _adam(img, loss, steps=25)
    assert float(loss(img.detach())) < 0.7 * before_loss
    assert measure(img.detach()) < before_diff


def test_prompt_loss_positive_pulls_negative_pushes():
    target = torch.randn(1, 8)
    for w, sign in ((1.0, -1), (-1.0, 1)):
        torch.manual_seed(1)
        emb = torch.randn(4, 8, requires_grad=True)
        before = float(spherical_dist(emb.detach()[:, None], target[None]).mean())
        _loss = lambda e: prompt_loss(e, target, torch.tensor([w]), torch.ones(4, 1))  # noqa: E731
        opt = torch.optim.Adam([emb], lr=0.05)
        for _ in range(10):
            opt.zero_grad()
            _loss(emb).backward()
            opt.step()
        after = float(spherical_dist(emb.detach()[:, None], target[None]).mean())
        assert (after - before) * sign > 0


def test_semantic_symmetry_raises_the_pair_cosine():
    clip = load_clip("tiny", weights_dir=None, device=torch.device("cpu"))
    targets = clip.encode_text(["an entrance to heaven", "an entrance to hell"], torch.device("cpu"))
    g = torch.Generator().manual_seed(2)
    torch.manual_seed(2)
    img = torch.rand(1, 3, 32, 64, requires_grad=True)
    boxes = cut.sample_boxes(8, 64, 32, 32, 1.0, g, mirror_pairs=4)
    mix = panorama_weights(boxes.x_centre, 2, "linear")

    def loss(x):
        emb = clip.encode_image(cut.make_cutouts(x, boxes, clip.size, None))
        return semantic_symmetry_loss(emb, targets, mix, 4)

    before = float(loss(img.detach()))
    _adam(img, loss, steps=15, lr=0.02)
    assert float(loss(img.detach())) < before  # 1 - cos fell: the cosine rose


def test_the_cpu_and_cuda_cutout_paths_agree():
    """crop_resize takes per-crop pooling on the CPU and one roi_align on CUDA; both sample the same areas."""
    from renderer.vqgan_clip import cutouts as cut

    g = torch.Generator().manual_seed(3)
    img = torch.rand(1, 3, 64, 128)
    boxes = cut.sample_boxes(12, 128, 64, 16, 1.0, g, mirror_pairs=3)
    boxes.size = torch.full_like(boxes.size, 32)  # a multiple of the output size: area averages agree exactly
    boxes.x0, boxes.y0 = boxes.x0.clamp(max=128 - 32), boxes.y0.clamp(max=64 - 32)
    a, b = torch.arange(3) * 2, torch.arange(3) * 2 + 1
    boxes.x0[b] = 128 - boxes.x0[a] - 32
    assert torch.allclose(cut.crop_resize(img, boxes, 16), cut.crop_resize_roi(img, boxes, 16), atol=1e-5)
    smooth = torch.nn.functional.interpolate(torch.rand(1, 3, 8, 16), size=(64, 128), mode="bilinear")
    mixed = cut.sample_boxes(12, 128, 64, 16, 1.0, g)  # any sizes: close on a smooth picture
    assert (cut.crop_resize(smooth, mixed, 16) - cut.crop_resize_roi(smooth, mixed, 16)).abs().mean() < 0.01


def _augment_step_by_step(x: torch.Tensor, p: cut.AugmentParams, n_pairs: int) -> torch.Tensor:
    """The augmentations one after the other, as the classic notebooks apply them: the reference for
    ``cut.augment``, which folds the flip into the warp, blurs only the cutouts drawn to be blurred and
    does the colour changes as one matrix."""
    import math

    import kornia

    n, _, s, _ = x.shape
    ang = p.angle * math.pi / 180
    cos, sin, sc, sh = ang.cos(), ang.sin(), p.scale, p.shear
    a11, a12, a21, a22 = cos * sc, (cos * sh - sin) * sc, sin * sc, (sin * sh + cos) * sc
    c = (s - 1) / 2
    m = torch.stack([torch.stack([a11, a12, c - a11 * c - a12 * c + p.tx * s], 1),
                     torch.stack([a21, a22, c - a21 * c - a22 * c + p.ty * s], 1)], 1)
    x = kornia.geometry.transform.warp_affine(x, m, (s, s), mode="bilinear", padding_mode="reflection",
                                              align_corners=True)
    x = torch.where(p.flip[:, None, None, None], x.flip(-1), x)
    if bool((p.blur > 0).any()):
        k = 2 * math.ceil(2 * float(p.blur.max())) + 1
        blurred = kornia.filters.gaussian_blur2d(x, (k, k), p.blur.clamp(min=1e-3)[:, None].expand(n, 2))
        x = torch.where((p.blur > 0)[:, None, None, None], blurred, x)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * p.contrast[:, None, None, None] + mean + p.bright[:, None, None, None]
    grey = 0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]
    x = grey + (x - grey) * p.sat[:, None, None, None]
    noise = cut._pair_noise(torch.randn((n - n_pairs, 3, s, s), generator=torch.Generator().manual_seed(p.noise_seed)),
                            n_pairs)
    return (x + noise * p.noise[:, None, None, None]).clamp(0, 1)


def test_augment_matches_the_step_by_step_augmentations_values_and_gradients():
    g = torch.Generator().manual_seed(5)
    boxes = cut.sample_boxes(24, 96, 48, 16, 1.0, g, mirror_pairs=5)
    params = cut.sample_augment(boxes, cut.AugmentConfig(blur_p=0.5, jitter=0.3), g)
    assert params.flip.any() and not params.flip.all() and (params.blur > 0).any() and (params.blur == 0).any()
    x = torch.rand(24, 3, 16, 16, requires_grad=True)
    y = x.detach().clone().requires_grad_(True)
    ours, ref = cut.augment(x, params, 5), _augment_step_by_step(y, params, 5)
    assert (ours - ref).abs().max() < 2e-5
    weights = torch.rand_like(ours)
    (ours * weights).sum().backward()
    (ref * weights).sum().backward()
    assert (x.grad - y.grad).abs().max() < 2e-5
    # Under the Doorways' bfloat16 autocast the cutout stage stays float32: only the image's own rounding differs
    img = torch.rand(1, 3, 48, 96).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = cut.make_cutouts(img, boxes, 16, params)
    assert low.dtype == torch.float32
    assert torch.equal(low, cut.make_cutouts(img.float(), boxes, 16, params))


def test_cpu_crops_match_the_per_cutout_loop_values_and_gradients():
    g = torch.Generator().manual_seed(6)
    img = torch.rand(1, 3, 40, 80, requires_grad=True)
    ref_img = img.detach().clone().requires_grad_(True)
    boxes = cut.sample_boxes(16, 80, 40, 24, 0.7, g, mirror_pairs=4)
    boxes.size[-1] = 12  # smaller than the output: enlarged (bilinear), as the classic loop does
    out, ref = cut.crop_resize(img, boxes, 24), cut.per_cutout_reference(ref_img, boxes, 24)
    assert torch.equal(out, ref)
    weights = torch.rand_like(out)
    (out * weights).sum().backward()
    (ref * weights).sum().backward()
    assert (img.grad - ref_img.grad).abs().max() < 1e-5
    frozen = img.detach()  # no gradient wanted: no backward work
    assert not cut.crop_resize(frozen, boxes, 24).requires_grad
