"""StyleGAN latent loop walks: seamless loops in z, w and W+, written as H.264 MP4 and GIF."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from renderer.base import GeneratorUnavailable, build
from renderer.family.stylegan_walk import slerp
from tests.stylegan_helpers import tiny_sg2
from tests.stylegan_mapping_helpers import mapping_tensors, write_nvlabs_with_mapping
from tests.vqgan_helpers import request, tiny_ctx


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return write_nvlabs_with_mapping(tiny_sg2(res=32), mapping_tensors(), tmp_path_factory.mktemp("walk") / "g.pkl")


def test_slerp_keeps_the_ends_and_the_norm():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(1, 512, generator=g), torch.randn(1, 512, generator=g)
    assert torch.allclose(slerp(a, b, 0.0), a, atol=1e-5) and torch.allclose(slerp(a, b, 1.0), b, atol=1e-4)
    mid = slerp(a, b, 0.5)
    assert abs(mid.norm() - (a.norm() + b.norm()) / 2) < 0.05 * a.norm()  # a linear mix would shrink to ~0.71
    assert (a.lerp(b, 0.5)).norm() < 0.8 * a.norm()


@pytest.mark.parametrize("space", ["z", "w", "wplus"])
def test_walk_is_a_seamless_loop_written_as_mp4_and_gif(tmp_path, ckpt, space):
    import av
    from PIL import Image

    s = {"checkpoint": str(ckpt), "space": space, "keyframes": 3, "frames_per_key": 4, "fps": 12}
    seen = []
    ctx = tiny_ctx(tmp_path, progress=seen.append)
    res = build("stylegan_walk", s, ctx).render(request(width=32, height=32, seed=3), ctx)
    assert res.meta["frames"] == 12 and [i["step"] for i in seen] == list(range(1, 13))
    frames = [np.asarray(i["image"]).astype(float) for i in seen]
    steps = [np.abs(frames[i] - frames[(i + 1) % 12]).mean() for i in range(12)]
    assert min(steps) > 0  # it moves
    assert steps[-1] < 3 * np.median(steps)  # the jump from the last frame back to the first is an ordinary step
    with av.open(str(res.extra_files["animation"])) as c:
        assert c.streams.video[0].codec_context.name == "h264"
        assert sum(1 for _ in c.decode(video=0)) == 12
    with Image.open(res.extra_files["animation_gif"]) as gif:
        assert gif.n_frames == 12
    again = build("stylegan_walk", s, tiny_ctx(tmp_path / "b")).render(request(width=32, height=32, seed=3),
                                                                     tiny_ctx(tmp_path / "b"))
    assert np.array_equal(np.asarray(res.image), np.asarray(again.image))  # deterministic from the seed


def test_bad_walk_settings_are_named(tmp_path, ckpt):
    with pytest.raises(GeneratorUnavailable, match="keyframes.*from 2 to 64"):
        build("stylegan_walk", {"checkpoint": str(ckpt), "keyframes": 1}, tiny_ctx(tmp_path))
    with pytest.raises(GeneratorUnavailable, match="'checkpoint'"):
        build("stylegan_walk", {}, tiny_ctx(tmp_path))
