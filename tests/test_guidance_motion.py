"""Story mode (prompts changing over the run) and zoom-and-rotate between steps, for every generator that can."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from renderer.base import GeneratorUnavailable, RenderCancelled, build
from renderer.family.clipdraw import stroke_coverage
from renderer.guidance import motion
from tests.vqgan_helpers import TINY_SETTINGS, request, tiny_ctx

BASE = {"clip_models": ["tiny"], "steps": 8, "cutouts": 8, "progress_every": 1, "checkpoint_every": 0}
ZOOMABLE = {"pixels": {}, "fourier": {}, "clipdraw": {"strokes": 12, "samples": 6}, "vqgan_clip": TINY_SETTINGS}


def test_zoom_matrix_scales_about_the_centre_and_points_follow_the_picture():
    m = motion.zoom_matrix(motion.Zoom(every=1, scale=2.0, rotate=90.0, shift=(1.0, 0.0)), 9, 9)
    assert torch.allclose(m @ torch.tensor([4.0, 4.0, 1.0]), torch.tensor([5.0, 4.0]))  # centre pixel -> shifted
    img = torch.zeros(1, 3, 33, 33)
    img[:, :, 14:19, 20:23] = 1.0  # a blob right of centre
    moved = motion.warp_image(img, motion.zoom_matrix(motion.Zoom(scale=1.5, rotate=90.0), 33, 33))
    ys, xs = torch.nonzero(moved[0, 0] > 0.5, as_tuple=True)
    # rotating +90 degrees (y down) takes "right of centre" to "below centre"
    assert ys.float().mean() > 20 and abs(xs.float().mean() - 16) < 1.5
    # a CLIPDraw stroke moved with warp_points lands where the warped picture of it lands
    ctrl = torch.tensor([[[10.0, 8.0], [14.0, 8.0], [18.0, 8.0], [22.0, 8.0]]])
    mat = motion.zoom_matrix(motion.Zoom(scale=1.3, rotate=20.0, shift=(2.0, -1.0)), 33, 33)
    drawn = stroke_coverage(ctrl, torch.tensor([3.0]), 33, 33)[None].expand(1, 3, 33, 33)
    warped_picture = motion.warp_image(drawn, mat)[0, 0]
    moved_stroke = stroke_coverage(motion.warp_points(ctrl, mat), torch.tensor([3.9]), 33, 33)[0]
    inter = (warped_picture * moved_stroke).sum() / torch.maximum(warped_picture, moved_stroke).sum()
    assert inter > 0.7


@pytest.mark.parametrize("name", sorted(ZOOMABLE))
def test_zoom_and_story_resume_bit_identically(tmp_path, name):
    s = {**BASE, **ZOOMABLE[name], "steps": 8, "zoom": {"every": 2, "scale": 1.1, "rotate": 5.0},
         "story": [{"at": 0, "prompt": "a door"}, {"at": 4, "prompt": "a tunnel of light | fog:-0.5"}],
         "timelapse_format": "gif"}
    straight = build(name, s, tiny_ctx(tmp_path / "a")).render(request(), tiny_ctx(tmp_path / "a"))
    seen = []
    ctx = tiny_ctx(tmp_path / "b", progress=seen.append, should_stop=lambda: len(seen) >= 3)
    with pytest.raises(RenderCancelled):
        build(name, s, ctx).render(request(), ctx)
    resumed = build(name, s, tiny_ctx(tmp_path / "b")).render(request(), tiny_ctx(tmp_path / "b"))
    assert np.array_equal(np.asarray(straight.image), np.asarray(resumed.image))
    assert straight.meta["story"][1] == {"at": 4, "prompts": [["a tunnel of light", 1.0], ["fog", -0.5]]}
    assert straight.meta["zoom"]["every"] == 2
    from PIL import Image

    with Image.open(straight.extra_files["timelapse"]) as gif:  # one frame per zoom step by default
        assert gif.n_frames == 4


def test_zoom_moves_the_picture(tmp_path):
    """With lr ~ 0 the optimiser does nothing, so what changes between frames is the zoom alone."""
    s = {**BASE, "steps": 4, "lr": 1e-9, "init_std": 1.0, "zoom": {"every": 1, "scale": 1.25}}
    res = build("pixels", s, tiny_ctx(tmp_path)).render(request(width=32, height=32), tiny_ctx(tmp_path))
    still = build("pixels", {**BASE, "steps": 4, "lr": 1e-9, "init_std": 1.0}, tiny_ctx(tmp_path / "s")).render(
        request(width=32, height=32), tiny_ctx(tmp_path / "s"))
    a, b = np.asarray(res.image).astype(float), np.asarray(still.image).astype(float)
    assert np.abs(a - b).mean() > 10
    # zooming in enlarges structure: neighbouring pixels become more alike
    assert np.abs(np.diff(a, axis=1)).mean() < 0.7 * np.abs(np.diff(b, axis=1)).mean()


@pytest.mark.parametrize("value,needle", [({"every": 0}, "every = N >= 1"), ({"scale": 3}, "scale = 0.5..2"),
                                          ({"twirl": 1}, "a table")])
def test_bad_zoom_is_named(tmp_path, value, needle):
    with pytest.raises(GeneratorUnavailable, match=needle):
        build("pixels", {**BASE, "zoom": value}, tiny_ctx(tmp_path))


@pytest.mark.parametrize("value,needle", [([], "non-empty list"), ([{"at": 3, "prompt": "x"}], "start at 0"),
                                          (["a", {"at": 0, "prompt": "b"}], "either all"),
                                          (["x:-1"], "positive weight")])
def test_bad_story_is_named(tmp_path, value, needle):
    with pytest.raises(GeneratorUnavailable, match=needle):
        build("pixels", {**BASE, "story": value}, tiny_ctx(tmp_path))


def test_zoom_is_refused_where_it_cannot_work(tmp_path):
    gen = build("siren", {**BASE, "layers": 2, "hidden": 8, "zoom": {"every": 2}}, tiny_ctx(tmp_path))
    with pytest.raises(ValueError, match="zoom mode is not available"):
        gen.render(request(), tiny_ctx(tmp_path))


def test_vqgan_latent_interpolation_from_an_init_picture_to_the_piece(tmp_path):
    """The Doorways surgery case: start from one picture, and the interpolation runs from it to the new piece."""
    from PIL import Image

    init = tmp_path / "before.png"
    arr = np.zeros((32, 48, 3), np.uint8)
    arr[:, :24] = (230, 30, 30)
    Image.fromarray(arr).save(init)
    s = {**TINY_SETTINGS, "steps": 4, "interpolate": 5, "timelapse_format": "both"}
    res = build("vqgan_clip", s, tiny_ctx(tmp_path)).render(request(init_image=str(init)), tiny_ctx(tmp_path))
    import av

    with av.open(str(res.extra_files["interpolation"])) as c:
        frames = [f.to_ndarray(format="rgb24").astype(float) for f in c.decode(video=0)]
    assert len(frames) == 5 and res.meta["interpolation_frames"] == 5
    # the last frame is the finished piece; frames move steadily away from the first
    d = [np.abs(f - frames[0]).mean() for f in frames]
    assert d[1] < d[2] < d[4] and d[4] > 3
    with Image.open(res.extra_files["interpolation_gif"]) as gif:
        assert gif.n_frames == 5
        first = np.asarray(gif.convert("RGB")).astype(float)
        gif.seek(4)
        last = np.asarray(gif.convert("RGB")).astype(float)
    piece = np.asarray(res.image).astype(float)
    # the last frame is the finished piece, up to the GIF's 256-colour palette; the first is not
    assert np.abs(last - piece).mean() < 9 and np.abs(last - piece).mean() < 0.5 * np.abs(first - piece).mean()


@pytest.mark.parametrize("name", ["deepdream", "clip_diffusion"])
def test_generators_with_their_own_loop_refuse_motion_settings(name):
    from renderer.base import _REGISTRY, names

    if name not in names():
        pytest.skip(f"{name} is not registered here")
    from renderer.guidance.host import GuidedGenerator

    gen_cls = next(c for c in GuidedGenerator.__subclasses__() if getattr(c, "name", "") == name)
    with pytest.raises(GeneratorUnavailable, match="runs its own loop.*zoom"):
        gen_cls.parse({"clip_models": ["tiny"], "zoom": {"every": 2}}, strict=False)
    assert _REGISTRY[name]
