"""The GPU paths of renderer.accel (compile modes, CUDA-graph runner, float16 loss scaling), run on the CPU.

On the CPU the graph runner takes its static-buffer path (the same buffers and rules, the function run
eagerly); float16 autocast is real on the CPU, so the loss scaler really scales, skips and backs off.
Compile failures are provoked for real: inductor pointed at a C++ compiler that does not exist.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from renderer import accel, base
from renderer.base import GeneratorUnavailable, RenderCancelled, RenderContext, RenderRequest
from renderer.guidance.loop import STATE_FILE, Hooks, OptimConfig, Problem, optimise
from renderer.stylegan.generator import parse_sampling
from renderer.vqgan_clip.generator import parse_settings as vqgan_settings
from tests.stylegan_helpers import tiny_sg2, write_nvlabs_pkl, ws_for
from tests.vqgan_helpers import TINY_SETTINGS, request, tiny_ctx

CPU = torch.device("cpu")


def _no_compiler():
    """Inductor with a C++ compiler that is not there (and no cached kernels to fall back on)."""
    import torch._inductor.config as ic

    return ic.patch({"cpp.cxx": (None, "/nonexistent/bin/cc"), "fx_graph_cache": False})


# --------------------------------------------------------------------------- compile modes


@pytest.mark.parametrize("value,mode", [(True, "default"), (False, "off"), (None, "off"), ("off", "off"),
                                        ("default", "default"), ("reduce-overhead", "reduce-overhead"),
                                        ("max-autotune", "max-autotune")])
def test_compile_setting_values(value, mode):
    assert accel.parse_compile_mode(value) == mode


@pytest.mark.parametrize("value", ["fast", "", 1, "Default", ["default"]])
def test_unknown_compile_mode_is_a_clear_value_error(value):
    with pytest.raises(ValueError, match="allowed: true, false, 'off', 'default', 'reduce-overhead', 'max-autotune'"):
        accel.parse_compile_mode(value)
    with pytest.raises(ValueError, match="allowed: off, default"):
        accel.Compiled(torch.sin, str(value))


def test_compile_off_is_the_function_itself():
    assert accel.compiled(torch.sin, "off") is torch.sin


@pytest.mark.parametrize("backend", ["eager", "aot_eager"])
def test_compiled_module_keeps_shape_dtype_and_gradients(backend):
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 5, 3, padding=1)
    x = torch.randn(2, 3, 8, 8, requires_grad=True)
    c = accel.Compiled(conv, "default", backend=backend, name="conv")
    out = c(x)
    assert c.active and c.failure is None
    assert out.shape == (2, 5, 8, 8) and out.dtype == torch.float32
    ref = conv(x)
    assert torch.allclose(out, ref, atol=1e-6)
    (g,) = torch.autograd.grad(out.square().sum(), x)
    (g_ref,) = torch.autograd.grad(ref.square().sum(), x)
    assert torch.allclose(g, g_ref, atol=1e-5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert c(x).dtype == torch.bfloat16


def test_errors_of_the_function_itself_pass_through_and_keep_it_compiled():
    def checked(x):
        if bool((x < 0).any()):
            raise ValueError("negative input")
        return x.sqrt()

    c = accel.Compiled(checked, "default", backend="eager")
    with pytest.raises(ValueError, match="negative input"):
        c(-torch.ones(3))
    assert c.active and c.failure is None
    assert torch.equal(c(torch.full((3,), 4.0)), torch.full((3,), 2.0))


def test_compile_failure_at_the_first_call_falls_back_to_eager_with_one_warning(caplog):
    def shade(x):  # defined here: a code object no earlier compile has seen
        return torch.tanh(x) * 0.5 + x.mean()

    x = torch.linspace(-2, 2, 16)
    with _no_compiler(), caplog.at_level(logging.WARNING, logger="renderer.accel"):
        c = accel.Compiled(shade, "default", name="shade")
        first = c(x)
        second = c(x * 2)
    assert torch.equal(first, shade(x)) and torch.equal(second, shade(x * 2))
    assert not c.active and "compiler" in c.failure.lower()
    warnings = [r for r in caplog.records if "failed, running it eagerly" in r.getMessage()]
    assert len(warnings) == 1 and "shade" in warnings[0].getMessage()


@pytest.mark.timeout(180)
def test_inductor_really_compiles_a_small_function(tmp_path, monkeypatch):
    # The one test that runs the real compiler (gcc): a fused elementwise kernel, mode "default",
    # into an empty cache so that nothing compiled earlier is reused.
    import torch._inductor.config as ic

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))

    def glow(x, y):
        return torch.sigmoid(x * 3.0 - y) * y + 0.25

    x, y = torch.randn(64, 33), torch.rand(64, 33)
    c = accel.Compiled(glow, "default", name="glow")
    with ic.patch({"fx_graph_cache": False}):
        out = c(x, y)
    assert any((tmp_path / "inductor").rglob("*.so"))  # gcc built a kernel library
    assert c.active and c.failure is None
    assert out.shape == (64, 33) and out.dtype == torch.float32
    assert torch.allclose(out, glow(x, y), atol=1e-6)


# --------------------------------------------------------------------------- graph runner (static-buffer path)


def test_static_runner_gives_the_synthesis_image_through_reused_buffers():
    net = tiny_sg2()
    runner = accel.synthesis_runner(net, "const", capture=False)
    a, b = ws_for(net, n=2, seed=1), ws_for(net, n=2, seed=2)
    out_a = runner.run(a)
    kept_a = out_a.clone()
    assert out_a.shape == (2, 3, 16, 16) and out_a.dtype == torch.float32
    assert torch.equal(kept_a, net(a, noise_mode="const"))
    out_b = runner.run(b)
    assert out_b.data_ptr() == out_a.data_ptr()  # the same static output buffer...
    assert torch.equal(out_a, net(b, noise_mode="const"))  # ...so the first result was overwritten
    assert not torch.equal(out_a, kept_a)
    copy_b = runner(b)  # calling the runner returns a copy that survives the next call
    runner(a)
    assert torch.equal(copy_b, net(b, noise_mode="const")) and copy_b.data_ptr() != out_a.data_ptr()
    assert runner.captures == 1


def test_static_runner_sets_up_again_for_a_new_shape_dtype_or_key():
    net = tiny_sg2()
    runner = accel.synthesis_runner(net, "none", capture=False, max_graphs=2)
    one, three = ws_for(net, n=1), ws_for(net, n=3)
    assert runner(one).shape == (1, 3, 16, 16) and runner.captures == 1
    assert torch.equal(runner(three), net(three, noise_mode="none")) and runner.captures == 2
    runner(one)
    assert runner.captures == 2  # kept
    assert runner(one.double()).dtype == torch.float32 and runner.captures == 3  # input dtype: a new entry
    runner(three)
    assert runner.captures == 4  # max_graphs=2 dropped the least recently used (batch 3)
    net.fp16_enabled = True  # part of the key: a graph bakes in which blocks run in fp16
    runner(one)
    assert runner.captures == 5
    runner.reset()
    runner(one)
    assert runner.captures == 6


def test_static_runner_refuses_an_output_that_changes_under_it():
    state = {"dtype": torch.float32}
    runner = accel.GraphRunner(lambda x: (x * 2).to(state["dtype"]), capture=False, name="twice")
    x = torch.ones(2, 3)
    assert runner(x).dtype == torch.float32
    state["dtype"] = torch.float16
    with pytest.raises(RuntimeError, match="twice: output changed .* give the runner a key"):
        runner(x)


def test_graph_capture_needs_cuda_and_auto_means_eager_on_the_cpu():
    runner = accel.GraphRunner(torch.sin, capture=True, name="sin")
    with pytest.raises(ValueError, match="capture=True needs a CUDA input"):
        runner(torch.ones(3))
    auto = accel.GraphRunner(torch.sin)
    assert torch.equal(auto(torch.ones(3)), torch.sin(torch.ones(3))) and auto.captures == 1
    with pytest.raises(ValueError, match="max_graphs"):
        accel.GraphRunner(torch.sin, max_graphs=0)


def test_random_noise_cannot_be_captured():
    with pytest.raises(ValueError, match="noise_mode 'random' cannot be captured.*'const' or 'none'"):
        accel.synthesis_runner(tiny_sg2(), "random")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_graph_replay_matches_eager_on_cuda():
    net = tiny_sg2().cuda()
    runner = accel.synthesis_runner(net, "const")
    ws = ws_for(net, n=2).cuda()
    first, again = runner(ws), runner(ws * 0.5)
    assert runner._entries and next(iter(runner._entries.values())).graph is not None
    assert torch.allclose(first, net(ws), atol=1e-5) and torch.allclose(again, net(ws * 0.5), atol=1e-5)
    assert runner.captures == 1


# --------------------------------------------------------------------------- the stylegan generator


def _ctx(tmp_path: Path) -> RenderContext:
    return RenderContext(device=CPU, dtype=torch.float32, weights_dir=tmp_path / "weights", work_dir=tmp_path / "w")


def _req(seed: int, **params) -> RenderRequest:
    return RenderRequest(job_id=1, exhibit="x", generator="stylegan", prompts=(), seed=seed, width=16, height=16,
                         params=params)


@pytest.fixture()
def sg2_path(tmp_path: Path) -> Path:
    return write_nvlabs_pkl(tiny_sg2(), tmp_path / "tiny-sg2.pkl")


def test_stylegan_cuda_graphs_on_the_cpu_are_ignored_with_a_log_line(sg2_path, tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="renderer.stylegan.generator"):
        gen = base.build("stylegan", {"checkpoint": str(sg2_path), "cuda_graphs": True}, _ctx(tmp_path))
    assert gen.runner is None
    assert [r.getMessage() for r in caplog.records if "cuda_graphs" in r.getMessage()] == [
        "stylegan generator: setting cuda_graphs is for CUDA; ignored on cpu"]


def test_stylegan_through_the_static_runner_renders_the_same_pictures(sg2_path, tmp_path):
    plain = base.build("stylegan", {"checkpoint": str(sg2_path), "batch": 2}, _ctx(tmp_path))
    forced = base.build("stylegan", {"checkpoint": str(sg2_path), "batch": 2, "cuda_graphs": True}, _ctx(tmp_path))
    forced.runner = accel.synthesis_runner(forced.net, "const", capture=False)  # the CUDA path's buffers
    a, b = plain.render(_req(5), _ctx(tmp_path)), forced.render(_req(5), _ctx(tmp_path))
    assert np.array_equal(np.asarray(a.image), np.asarray(b.image))
    seeds = [1, 2, 3, 4, 5]  # chunks of 2, 2 and 1
    for x, y in zip(plain.render_batch(seeds), forced.render_batch(seeds)):
        assert np.array_equal(np.asarray(x), np.asarray(y))
    assert forced.runner.captures == 2  # batch 1 (also the single render), batch 2


def test_stylegan_compile_falls_back_when_there_is_no_compiler(sg2_path, tmp_path, caplog):
    plain = base.build("stylegan", {"checkpoint": str(sg2_path)}, _ctx(tmp_path))
    with _no_compiler(), caplog.at_level(logging.WARNING, logger="renderer.accel"):
        gen = base.build("stylegan", {"checkpoint": str(sg2_path), "compile": "max-autotune"}, _ctx(tmp_path))
        assert gen.synthesis_fn.mode == "max-autotune" and gen.synthesis_fn.active
        images = [gen.render(_req(s), _ctx(tmp_path)).image for s in (3, 4)]
    assert not gen.synthesis_fn.active
    for s, im in zip((3, 4), images):
        assert np.array_equal(np.asarray(im), np.asarray(plain.render(_req(s), _ctx(tmp_path)).image))
    assert sum("failed, running it eagerly" in r.getMessage() for r in caplog.records) == 1


def test_stylegan_build_settings_are_not_changed_by_a_job(sg2_path, tmp_path, caplog):
    gen = base.build("stylegan", {"checkpoint": str(sg2_path)}, _ctx(tmp_path))
    with caplog.at_level(logging.WARNING, logger="renderer.stylegan.generator"):
        res = gen.render(_req(2, compile="default"), _ctx(tmp_path))
    assert res.image.size == (16, 16) and gen.synthesis_fn is gen.net
    assert any("compile is fixed when the generator is built" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("settings,needle", [
    ({"compile": "fast"}, "setting compile='fast' is invalid; allowed: true, false, 'off', 'default'"),
    ({"compile": 1}, "setting compile=1 is invalid"),
    ({"cuda_graphs": "yes"}, "setting cuda_graphs='yes' is invalid; allowed: true or false"),
    ({"cuda_graphs": True, "noise_mode": "random"}, "cuda_graphs=true needs noise_mode 'const' or 'none'"),
    ({"cuda_graphs": True, "compile": "reduce-overhead"}, "do not go together"),
])
def test_stylegan_speed_settings_are_validated(settings, needle):
    with pytest.raises(GeneratorUnavailable, match=needle):
        parse_sampling(settings)


def test_stylegan_speed_settings_accepted():
    for settings in ({"compile": True}, {"compile": "reduce-overhead"}, {"cuda_graphs": True},
                     {"cuda_graphs": True, "noise_mode": "none"}, {"cuda_graphs": False, "noise_mode": "random"}):
        parse_sampling(settings)


# --------------------------------------------------------------------------- float16 loss scaling in the loop


def _fp16_problem(seed: int = 0, nan_at=()):
    """A conv 'generator' whose squared-sum loss overflows float16 gradients at the scaler's first scales."""
    torch.manual_seed(seed)
    conv = torch.nn.Conv2d(4, 3, 3, padding=1).requires_grad_(False)
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(1, 4, 8, 8, generator=g).requires_grad_(True)
    target = torch.rand(1, 3, 8, 8, generator=g)
    seen: dict[str, list] = {"dtype": []}

    def generate(p):
        y = conv(p)
        seen["dtype"].append(y.dtype)
        return torch.sigmoid(y)

    def term(img, step):
        loss = (img.float() + torch.rand(img.shape, generator=g) * 0.01 - target).pow(2).sum() * 10
        return {"mse": loss * float("nan") if step in nan_at else loss}

    return Problem(params=z, generate=generate, terms=[term], generators=[g]), seen


def test_float16_loop_scales_the_loss_and_moves_the_latent(tmp_path):
    p, seen = _fp16_problem()
    z0 = p.params.detach().clone()
    res = optimise(p, OptimConfig(steps=8, lr=0.05, amp_dtype=torch.float16, progress_every=0), Hooks(tmp_path))
    assert set(seen["dtype"]) == {torch.float16}  # the convolution really ran in float16
    assert p.params.dtype == torch.float32 and torch.isfinite(p.params).all()
    assert not torch.equal(p.params.detach(), z0)
    assert 1 <= res.skipped_steps < 8  # the first scales overflowed and were skipped, not raised
    assert res.loss_scale is not None and res.loss_scale < 2.0 ** 16
    assert res.image.dtype == torch.float32 and res.image.shape == (1, 3, 8, 8)


@pytest.mark.parametrize("dtype", [None, torch.bfloat16])
def test_bfloat16_and_float32_keep_no_scaler(tmp_path, dtype):
    p, seen = _fp16_problem()
    res = optimise(p, OptimConfig(steps=3, lr=0.05, amp_dtype=dtype, progress_every=0), Hooks(tmp_path))
    assert res.loss_scale is None and res.skipped_steps == 0
    assert set(seen["dtype"]) == {dtype or torch.float32}


def test_float16_resume_restores_the_loss_scale_and_continues_bit_identically(tmp_path):
    cfg = OptimConfig(steps=10, lr=0.05, amp_dtype=torch.float16, progress_every=1, fingerprint="f16")
    p1, _ = _fp16_problem()
    straight = optimise(p1, cfg, Hooks(tmp_path / "a"))
    seen = []
    p2, _ = _fp16_problem()
    with pytest.raises(RenderCancelled):
        optimise(p2, cfg, Hooks(tmp_path / "b", progress=seen.append, should_stop=lambda: len(seen) >= 6))
    saved = torch.load(tmp_path / "b" / STATE_FILE, weights_only=True)
    assert saved["step"] == 6 and saved["scaler"]["scale"] < 2.0 ** 16  # backed off, and saved
    p3, _ = _fp16_problem()
    resumed = optimise(p3, cfg, Hooks(tmp_path / "b"))
    assert resumed.resumed_from == 6 and resumed.skipped_steps == 0  # the scale it resumed with fits
    assert resumed.loss_scale == straight.loss_scale
    assert torch.equal(straight.image, resumed.image) and straight.losses == resumed.losses


def test_a_passing_non_finite_float16_loss_is_skipped(tmp_path):
    p, _ = _fp16_problem(nan_at=(5,))
    res = optimise(p, OptimConfig(steps=8, lr=0.05, amp_dtype=torch.float16, progress_every=0), Hooks(tmp_path))
    assert res.steps_done == 8 and torch.isfinite(p.params).all() and torch.isfinite(res.image).all()


def test_a_float16_loss_that_stays_non_finite_raises_with_the_step(tmp_path):
    p, _ = _fp16_problem(nan_at=range(2, 100))
    cfg = OptimConfig(steps=20, lr=0.05, amp_dtype=torch.float16, progress_every=0, max_nonfinite_steps=4)
    with pytest.raises(FloatingPointError, match=r"loss became nan at step 5 under float16 autocast, non-finite "
                                                 r"for 4 steps in a row"):
        optimise(p, cfg, Hooks(tmp_path))


def test_without_a_scaler_a_non_finite_loss_still_raises_at_once(tmp_path):
    p, _ = _fp16_problem(nan_at=(2,))
    with pytest.raises(FloatingPointError, match="loss became nan at step 2"):
        optimise(p, OptimConfig(steps=5, lr=0.05, progress_every=0), Hooks(tmp_path))


# --------------------------------------------------------------------------- the vqgan_clip generator


def test_doorways_float16_render_runs_finite(tmp_path):
    ctx = tiny_ctx(tmp_path, dtype=torch.float16)
    res = base.build("vqgan_clip", dict(TINY_SETTINGS, steps=3), ctx).render(request(), ctx)
    assert res.meta["steps_done"] == 3 and all(np.isfinite(v) for v in res.meta["losses"].values())
    assert np.asarray(res.image).std() > 0


@pytest.mark.parametrize("value", [True, False, "off", "default", "reduce-overhead", "max-autotune"])
def test_doorways_compile_setting_accepts_modes_and_bools(value):
    assert vqgan_settings({"compile": value}).compile == value


@pytest.mark.parametrize("value", ["fast", 2, "on"])
def test_doorways_bad_compile_setting_is_named(value):
    with pytest.raises(GeneratorUnavailable, match=r"setting 'compile' = .*; allowed: true, false, 'off', 'default', "
                                                   r"'reduce-overhead', 'max-autotune'"):
        vqgan_settings({"compile": value})


def test_doorways_compile_without_a_compiler_still_renders(tmp_path, caplog):
    settings = dict(TINY_SETTINGS, steps=2, compile="default")
    plain = base.build("vqgan_clip", dict(settings, compile=False), tiny_ctx(tmp_path / "a")).render(
        request(), tiny_ctx(tmp_path / "a"))
    with _no_compiler(), caplog.at_level(logging.WARNING, logger="renderer.accel"):
        gen = base.build("vqgan_clip", settings, tiny_ctx(tmp_path / "b"))
        first = gen.render(request(), tiny_ctx(tmp_path / "b"))
        gen.render(request(seed=8), tiny_ctx(tmp_path / "c"))
    assert np.array_equal(np.asarray(first.image), np.asarray(plain.image))
    assert sum("failed, running it eagerly" in r.getMessage() for r in caplog.records) == 1


def test_stylegan2_synthesis_traces_as_one_graph_for_torch_compile() -> None:
    # compile = "default" etc. wrap the whole synthesis: it must trace without graph breaks (none expected).
    from tests.stylegan_helpers import tiny_sg2, ws_for

    net = tiny_sg2(res=32).eval().requires_grad_(False)
    with torch.no_grad():
        explained = torch._dynamo.explain(net)(ws_for(net, n=1))
    assert explained.graph_break_count == 0, [str(r.reason) for r in explained.break_reasons]
    assert explained.graph_count == 1
