"""DeepDream: torchvision weights files loaded with weights_only and checked against torchvision's own forward;
hostile files refused; layers by name, octaves, tiling, resume, CLIP steering."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision

from renderer.base import GeneratorUnavailable, RenderCancelled, build
from renderer.checkpoint_io import CheckpointError, UnsafePickle
from renderer.deepdream import generator as ddg
from renderer.deepdream.model import Classifier, LayerTaps, load_classifier, random_classifier, resolve_layer
from tests.family2_helpers import damaged_variants, malicious_torch_file
from tests.vqgan_helpers import request, tiny_ctx

TINY = {"model": "tiny", "layers": ["inception3b"], "octaves": 2, "iterations": 2, "tile_size": 0, "jitter": 4,
        "checkpoint_every": 0, "progress_every": 1}


@pytest.fixture(scope="module")
def googlenet_file(tmp_path_factory):
    """A random GoogLeNet saved as torchvision publishes its weights: the state dict with the aux heads."""
    torch.manual_seed(5)
    ref = torchvision.models.googlenet(weights=None, aux_logits=True, init_weights=True, transform_input=True)
    with torch.no_grad():
        for m in ref.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    path = tmp_path_factory.mktemp("w") / "googlenet-1378be20.pth"
    torch.save(ref.state_dict(), path)
    return path, ref.eval()


def test_weights_file_matches_torchvision_forward(googlenet_file):
    path, ref = googlenet_file
    model, arch = load_classifier(path)
    assert arch == "googlenet" and model.aux1 is None and model.transform_input
    x = torch.rand(1, 3, 64, 80, generator=torch.Generator().manual_seed(0))
    taps = LayerTaps(model, ["mixed4c", "inception3a.branch2"])
    ours = Classifier(model, arch).activations(x, taps)
    taps.close()
    # independent: torchvision's whole forward on the ImageNet-normalised input, layers caught by hooks
    got = {}
    ref.inception4c.register_forward_hook(lambda m, i, o: got.__setitem__("inception4c", o))
    ref.inception3a.branch2.register_forward_hook(lambda m, i, o: got.__setitem__("inception3a.branch2", o))
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        ref((x - mean) / std)
    assert set(ours) == {"inception4c", "inception3a.branch2"}
    for k in ours:
        torch.testing.assert_close(ours[k], got[k], atol=1e-5, rtol=1e-5)


def test_hostile_damaged_and_foreign_files_name_the_file(tmp_path, googlenet_file):
    marker = tmp_path / "pwned"
    evil = malicious_torch_file(tmp_path / "evil.pth", marker, wrap=lambda e: {"conv1.conv.weight": e})
    with pytest.raises(UnsafePickle, match="evil.pth"):
        load_classifier(evil)
    assert not marker.exists()
    small = tmp_path / "small.pth"
    torch.save({"conv1.conv.weight": torch.zeros(1)}, small)  # a state dict of something else
    with pytest.raises(CheckpointError, match="small.pth"):
        load_classifier(small)
    # a real torchvision state dict, but of another architecture
    other = tmp_path / "resnet.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), other)
    with pytest.raises(CheckpointError, match="neither a torchvision GoogLeNet"):
        load_classifier(other)
    source, _ = googlenet_file
    for kind, bad in damaged_variants(source, tmp_path / "bad").items():
        with pytest.raises(CheckpointError, match=str(bad)):
            load_classifier(bad)


def test_layers_by_name_and_classic_aliases(tmp_path):
    model = random_classifier()
    assert resolve_layer(model, "mixed4c") == "inception4c"
    assert resolve_layer(model, "conv2d2") == "conv3"
    assert resolve_layer(model, "inception4d.branch3") == "inception4d.branch3"
    with pytest.raises(ValueError, match="inception5b"):
        resolve_layer(model, "mixed9z")
    with pytest.raises(GeneratorUnavailable, match="'layers'"):
        build("deepdream", dict(TINY, layers=["nope"]), tiny_ctx(tmp_path))


def test_tiling_covers_the_picture_and_a_large_tile_equals_no_tiling():
    clf = Classifier(random_classifier(), "googlenet")
    taps = LayerTaps(clf.model, ["inception3a"])
    img = torch.rand(1, 3, 80, 112, generator=torch.Generator().manual_seed(2))
    whole, _ = ddg.dream_gradient(clf, taps, img, 0, torch.Generator().manual_seed(0), None)
    big, _ = ddg.dream_gradient(clf, taps, img, 512, torch.Generator().manual_seed(0), None)
    tiled, _ = ddg.dream_gradient(clf, taps, img, 48, torch.Generator().manual_seed(0), None)
    taps.close()
    assert torch.equal(whole, big)
    assert (tiled.abs().sum(1) > 0).float().mean() > 0.99  # every tile got its gradient
    assert ddg.octave_sizes(280, 140, 3, 1.4) == [(143, 71), (200, 100), (280, 140)]


def test_dreaming_raises_the_layer_objective(tmp_path):
    clf = Classifier(random_classifier(), "googlenet")
    taps = LayerTaps(clf.model, ["inception3b"])
    x = (0.5 + 0.1 * torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    before = float(clf.activations(x, taps)["inception3b"].pow(2).mean())
    ctx = tiny_ctx(tmp_path)
    res = build("deepdream", dict(TINY, octaves=1, iterations=6, seed=0, noise=0.1), ctx).render(
        request(width=64, height=64), ctx)
    y = torch.from_numpy(np.asarray(res.image).copy()).permute(2, 0, 1)[None].float() / 255
    after = float(clf.activations(y, taps)["inception3b"].pow(2).mean())
    taps.close()
    assert after > 1.5 * before


def test_resume_after_cancel_is_bit_identical_and_clip_steering_runs(tmp_path):
    settings = dict(TINY, clip_weight=0.5, clip_models=["tiny"], cutouts=4)
    a = tiny_ctx(tmp_path / "a")
    straight = build("deepdream", settings, a).render(request(width=48, height=40), a)
    assert set(straight.meta["losses"]) == {"dream", "prompts"}
    seen = []
    b = tiny_ctx(tmp_path / "b", progress=seen.append, should_stop=lambda: len(seen) >= 3)
    with pytest.raises(RenderCancelled):
        build("deepdream", settings, b).render(request(width=48, height=40), b)
    b2 = tiny_ctx(tmp_path / "b")
    resumed = build("deepdream", settings, b2).render(request(width=48, height=40), b2)
    assert resumed.meta["resumed_from"] == 3
    assert np.array_equal(np.asarray(straight.image), np.asarray(resumed.image))


def test_missing_weights_name_the_fetch_command(tmp_path):
    with pytest.raises(GeneratorUnavailable, match="fetch-models googlenet-imagenet"):
        build("deepdream", {"layers": ["mixed4c"]}, tiny_ctx(tmp_path))


def test_memory_refusal_names_the_largest_canvas_that_fits(tmp_path):
    from renderer import clip_steered as cs

    gen = build("deepdream", TINY, tiny_ctx(tmp_path))
    clf, _ = gen._model("tiny")
    est = lambda w, h: gen.estimate_bytes(clf, ["inception4c"], w, h, 0, 0)  # noqa: E731
    budget = est(1024, 768)
    with pytest.raises(cs.CanvasTooLarge, match="largest size that fits is 1024x768"):
        cs.check_fits(est, 2048, 1536, 8, budget, "DeepDream")
    # tiling bounds the memory: the same canvas fits with 512 px tiles
    tiled = lambda w, h: gen.estimate_bytes(clf, ["inception4c"], w, h, 512, 0)  # noqa: E731
    assert cs.check_fits(tiled, 2048, 1536, 8, budget, "DeepDream") <= budget
