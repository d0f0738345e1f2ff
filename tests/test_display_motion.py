"""Moving pieces on the kiosk: a piece's loop walk / story / timelapse plays over its still, decoded by a
thread off the frame loop, looping, and a broken video leaves the still on screen. Real MP4s and GIFs
written by the renderer's own writers, a real store, a real (dummy-driver) pygame window."""
from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from tests.display_helpers import (WORKER, FakeClock, near, opened, pump, show_config, solid,  # noqa: F401
                                   store)

import pygame  # noqa: E402  (display_helpers selects the dummy video driver first)

from exhibits.config import ConfigError  # noqa: E402
from exhibits.show import load_show  # noqa: E402
from exhibits.store import Store  # noqa: E402
from kiosk.display import motion, render  # noqa: E402
from renderer.guidance.video import write_gif, write_mp4  # noqa: E402

# six colours far apart after H.264's 4:2:0 and GIF's palette
LOOP = [(220, 30, 30), (30, 200, 40), (40, 60, 220), (230, 220, 40), (40, 210, 220), (220, 40, 220)]
STILL = (128, 128, 128)
FPS = 12


def colour_index(rgb, colours=LOOP, tol: int = 40) -> int | None:
    for i, c in enumerate(colours):
        if near(rgb, c, tol):
            return i
    return None


def moving_piece(store: Store, tmp_path: Path, files: dict[str, Path], still=STILL, prompt: str = "a loop walk"):
    job = store.submit("demo", prompt_text=prompt, prompts=[(prompt, 1.0)], source="playlist")
    claimed = store.claim(WORKER)
    assert claimed is not None and claimed.id == job.id
    meta = {"series": "Strange Attractions", "title": prompt, "generator": "stylegan_walk", "label": "loop walk",
            "params": {}, "config": {}, "models": {}, "sigma": None}
    return store.add_piece(claimed, WORKER, solid(still, (96, 96)), meta, extra_files=files)


def loop_frames(size: int = 96):
    return [solid(c, (size, size)) for c in LOOP]


def picture_colour(d) -> tuple[int, int, int]:
    """The colour at the centre of the piece's picture on screen."""
    rect = render.card_layout(d.size, (d.size[1], d.size[1]), flip=d.flip_side).image
    return tuple(d.screen.get_at(rect.center))[:3]


def watch(d, clk: FakeClock, seconds: float, step: float = 1 / 48) -> list[int | None]:
    """Tick the display through ``seconds`` of fake time; the picture's colour index after each tick."""
    seen = []
    t = 0.0
    while t < seconds:
        d.tick()
        seen.append(colour_index(picture_colour(d)))
        clk.advance(step)
        t += step
        time.sleep(0.004)  # let the decoder thread run
    return seen


def runs(seq):
    """Consecutive duplicates collapsed, Nones dropped."""
    out = []
    for x in seq:
        if x is not None and (not out or out[-1] != x):
            out.append(x)
    return out


@pytest.mark.parametrize("kind", ["mp4", "gif"])
def test_a_loop_plays_on_screen_in_order_and_loops_back_to_its_first_frame(store, opened, tmp_path, kind):
    src = tmp_path / f"animation.{kind}"
    (write_mp4 if kind == "mp4" else write_gif)(loop_frames(), src, fps=FPS)
    piece = moving_piece(store, tmp_path, {"animation": src})
    clk = FakeClock()
    d = opened(store, clk)
    assert pump(d, lambda: d.card_piece_id == piece.id, clock=clk)
    assert d.motion is not None
    seen = runs(watch(d, clk, 2.2 * len(LOOP) / FPS))
    # every frame, in order, then the first again: the loop played through at least twice
    assert seen[:len(LOOP) + 1] == list(range(len(LOOP))) + [0], seen
    assert seen.count(0) >= 2
    assert d.stats.motion_frames >= len(LOOP) + 1
    assert d.state == "showing" and d.machine.errors == 0


def test_decoding_runs_on_its_own_thread_and_the_loop_redraws_only_for_due_frames(store, opened, tmp_path,
                                                                                  monkeypatch):
    src = tmp_path / "animation.mp4"
    write_mp4(loop_frames(), src, fps=FPS)
    piece = moving_piece(store, tmp_path, {"animation": src})
    decoding_threads = set()
    original = motion.Decoder._pass

    def recording(self, *a, **kw):
        decoding_threads.add(threading.get_ident())
        return original(self, *a, **kw)

    monkeypatch.setattr(motion.Decoder, "_pass", recording)
    clk = FakeClock()
    d = opened(store, clk)
    assert pump(d, lambda: d.card_piece_id == piece.id, clock=clk)
    drawn0, ticks0, shown0 = d.stats.frames, d.stats.ticks, d.stats.motion_frames
    watch(d, clk, 2.0, step=1 / 96)  # the loop runs eight times per video frame
    drawn, ticks = d.stats.frames - drawn0, d.stats.ticks - ticks0
    shown = d.stats.motion_frames - shown0
    assert decoding_threads and threading.get_ident() not in decoding_threads
    assert d.motion.decoder.decoded >= 1 and d.motion.decoder.is_alive()
    # a still picture with a moving part is redrawn once per video frame, not once per loop
    assert ticks >= 150 and FPS <= shown and drawn <= shown + 2, (ticks, drawn, shown)
    # short loops are kept after their first pass: nothing is decoded again
    assert d.motion.decoder.cached and d.motion.decoder.decoded == len(LOOP)


@pytest.mark.parametrize("flip", [False, True])
def test_only_the_picture_changes_and_the_notice_over_it_stays_as_it_was(store, opened, tmp_path, flip):
    """Frames go to the picture's rectangle alone; the caption column and the notice ("warming up": no
    renderer has answered) look the same after many frames, the notice redrawn over the picture, not
    darkened by its translucent panel drawn again and again."""
    src = write_mp4(loop_frames(), tmp_path / "animation.mp4", fps=FPS)
    piece = moving_piece(store, tmp_path, {"animation": src})
    clk = FakeClock()
    d = opened(store, clk, width=480, height=240)
    d.flip_side = not flip  # take_next flips it: the picture at the left, then at the right
    assert pump(d, lambda: d.card_piece_id == piece.id and d.notice is not None, clock=clk)
    watch(d, clk, 0.2)
    box = d._notice_rect
    assert box is not None and box.colliderect(d.motion_rect) == flip
    column = pygame.Rect(d.motion_rect.right + 4 if not flip else 4, 4, 60, d.size[1] - 8)
    before = [tuple(d.screen.get_at(p)) for p in _points(box) + _points(column)]
    drawn0, shown0 = d.stats.frames, d.stats.motion_frames
    seen = runs(watch(d, clk, 1.0))
    assert len(seen) >= 6 and d.stats.motion_frames - shown0 >= 6
    after = [tuple(d.screen.get_at(p)) for p in _points(box) + _points(column)]
    if flip:  # the notice's panel lies over the moving picture: only its text and edges must stay
        text_before = [c for c, p in zip(before, _points(box)) if near(c, render.DIM, 30)]
        text_after = [c for c, p in zip(after, _points(box)) if near(c, render.DIM, 30)]
        assert text_before and len(text_after) >= len(text_before) * 0.8
        assert before[len(_points(box)):] == after[len(_points(box)):]
    else:
        assert before == after
    assert d.stats.frames - drawn0 >= 6


def _points(rect: pygame.Rect) -> list[tuple[int, int]]:
    return [(x, y) for x in range(rect.left, rect.right, 3) for y in range(rect.top, rect.bottom, 3)]


def test_a_loop_too_long_to_keep_is_streamed_with_a_bounded_queue(tmp_path):
    """Memory: past ``cache_bytes`` nothing is kept; every pass decodes from the file again, and no more than
    ``queue_frames`` decoded frames ever wait."""
    src = write_mp4(loop_frames(), tmp_path / "animation.mp4", fps=FPS)
    dec = motion.Decoder(src, (64, 64), "rgb24", queue_frames=2, cache_bytes=3 * 64 * 64 * 3)
    dec.start()
    try:
        frames = []
        deadline = time.monotonic() + 10
        while len(frames) < 3 * len(LOOP) and time.monotonic() < deadline:
            assert dec.out.qsize() <= 2
            frames.append(dec.out.get(timeout=5))
    finally:
        dec.stop()
        dec.join(2)
    assert not dec.cached and dec.decoded >= 3 * len(LOOP) - 2
    assert [f.index for f in frames[:2 * len(LOOP)]] == list(range(len(LOOP))) * 2
    assert [f.loop for f in frames[:2 * len(LOOP)]] == [0] * len(LOOP) + [1] * len(LOOP)
    ats = [f.at for f in frames]
    assert all(b - a == pytest.approx(1 / FPS, abs=1e-3) for a, b in zip(ats, ats[1:]))  # seamless: one period
    assert not dec.is_alive()


def _truncated(tmp_path: Path) -> Path:
    good = write_mp4(loop_frames(), tmp_path / "good.mp4", fps=FPS)
    bad = tmp_path / "truncated.mp4"
    bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    return bad


def _garbage(tmp_path: Path) -> Path:
    bad = tmp_path / "garbage.mp4"
    bad.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 40)
    return bad


@pytest.mark.parametrize("damage", [_truncated, _garbage])
def test_a_damaged_video_leaves_the_still_on_screen(store, opened, tmp_path, damage):
    piece = moving_piece(store, tmp_path, {"animation": damage(tmp_path)})
    clk = FakeClock()
    d = opened(store, clk)
    assert pump(d, lambda: d.card_piece_id == piece.id, clock=clk)
    assert pump(d, lambda: d.stats.motion_failed == 1, clock=clk, step=1 / 24)
    assert d.motion is None
    watch(d, clk, 0.5)
    assert near(picture_colour(d), STILL, 3)
    assert d.state == "showing" and d.card_piece_id == piece.id and d.machine.errors == 0


def test_play_motion_picks_the_video_or_none(store, opened, tmp_path):
    loop = write_mp4(loop_frames(), tmp_path / "animation.mp4", fps=FPS)
    lapse = write_gif([solid((250, 250, 250), (96, 96))] * 3, tmp_path / "timelapse.gif", fps=FPS)
    extra = {"timelapse": "pieces/x/timelapse.gif", "animation": "pieces/x/animation.mp4",
             "animation_gif": "pieces/x/animation.gif", "drawing": "pieces/x/drawing.svg"}
    assert motion.motion_file(extra, "loop") == "pieces/x/animation.mp4"
    assert motion.motion_file(extra, "timelapse") == "pieces/x/timelapse.gif"
    assert motion.motion_file(extra, "off") is None
    assert motion.motion_file({"drawing": "pieces/x/drawing.svg"}, "loop") is None
    piece = moving_piece(store, tmp_path, {"animation": loop, "timelapse": lapse})
    clk = FakeClock()
    d = opened(store, clk, play_motion="off")
    assert pump(d, lambda: d.card_piece_id == piece.id, clock=clk)
    watch(d, clk, 0.5)
    assert d.motion is None and d.stats.motion_frames == 0 and near(picture_colour(d), STILL, 3)


def test_play_motion_is_checked_in_the_show_file(tmp_path):
    good = tmp_path / "kiosk.toml"
    good.write_text('[show]\nplay_motion = "timelapse"\n')
    assert load_show(good).play_motion == "timelapse"
    bad = tmp_path / "bad.toml"
    bad.write_text('[show]\nplay_motion = "always"\n')
    with pytest.raises(ConfigError, match=r"bad\.toml.*show\.play_motion.*loop, timelapse or off.*'always'"):
        load_show(bad)


def test_crossfades_into_and_out_of_a_moving_piece(store, opened, tmp_path):
    from tests.display_helpers import add_piece

    src = write_mp4(loop_frames(), tmp_path / "animation.mp4", fps=FPS)
    moving = moving_piece(store, tmp_path, {"animation": src})
    clk = FakeClock()
    d = opened(store, clk, crossfade_seconds=1.0, hold_seconds=2.0)
    assert pump(d, lambda: d.card_piece_id == moving.id, clock=clk, step=0.05)
    seen = runs(watch(d, clk, 1.5))  # into it: the frames already move during the fade
    assert len(seen) >= 3, seen
    still = add_piece(store, solid((250, 250, 250), (96, 96)))
    assert pump(d, lambda: d.card_piece_id == still.id, clock=clk, step=0.05, timeout=10)
    assert d.motion is None  # its decoder was stopped when the next piece took the screen
    watch(d, clk, 1.2)
    assert near(picture_colour(d), (250, 250, 250), 6) and d.machine.errors == 0


def test_the_real_loop_plays_at_the_videos_rate_and_sleeps_between_frames(store, tmp_path):
    """The real clock and the real pacing (cfg.fps = 60): about FPS frames a second, few idle loops."""
    from kiosk.display import run

    src = write_mp4(loop_frames(), tmp_path / "animation.mp4", fps=FPS)
    moving_piece(store, tmp_path, {"animation": src})
    cfg = show_config(store.root, fps=60)
    stats = run(cfg, store, max_seconds=2.0)
    assert stats.state_errors == 0 and stats.motion_failed == 0
    assert 6 <= stats.motion_frames <= 2.0 * FPS + 2, stats.motion_frames
    assert stats.frames <= stats.motion_frames + 6  # no frame drawn without a reason
    assert stats.ticks <= 3 * stats.frames + 20  # the loop sleeps until the next frame is due


def test_playing_a_moving_piece_never_imports_torch(store, tmp_path):
    import os
    import subprocess
    import sys

    src = write_mp4(loop_frames(), tmp_path / "animation.mp4", fps=FPS)
    moving_piece(store, tmp_path, {"animation": src})
    code = ("import sys; from pathlib import Path; from exhibits.show import ShowConfig; from kiosk.display import run; "
            f"s = run(ShowConfig(data_dir=Path({str(store.root)!r}), fullscreen=False, width=160, height=90), "
            "max_seconds=1.0); assert s.motion_frames > 0, s.motion_frames; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    env = {**os.environ, "SDL_VIDEODRIVER": "dummy", "SDL_AUDIODRIVER": "dummy"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env,
                       cwd=str(Path(__file__).resolve().parents[1]))
    assert r.returncode == 0, r.stderr[-2000:]
