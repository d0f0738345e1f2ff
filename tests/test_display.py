"""The kiosk display against a real store, with a real (dummy-driver) pygame window."""
from __future__ import annotations

import time

import pytest

from tests.display_helpers import (WORKER, FakeClock, add_piece, center_color, finish_job, jpeg, near,  # noqa: F401
                                   opened, pump, show_config, solid, store)

import pygame  # noqa: E402  (display_helpers selects the dummy video driver first)

from kiosk.display import run  # noqa: E402
from kiosk.display.render import ACCENT, card_layout  # noqa: E402

RED, BLUE, GREEN, MAGENTA = (210, 30, 40), (30, 60, 220), (40, 200, 60), (230, 40, 230)


def colours_in(surface: pygame.Surface, rect: pygame.Rect) -> set[tuple[int, int, int]]:
    return {tuple(surface.get_at((x, y)))[:3] for x in range(rect.left, rect.right, 2)
            for y in range(rect.top, rect.bottom, 2)}


def test_shows_newest_piece_with_caption_and_qr(store, opened):
    add_piece(store, solid(RED))
    newest = add_piece(store, solid(BLUE), prompt="blue hour over the harbour")
    clk = FakeClock()
    d = opened(store, clk)
    assert pump(d, lambda: d.card_piece_id == newest.id, clock=clk)
    assert d.state == "showing"
    assert near(center_color(d), BLUE)
    w, h = d.size
    # the picture sits at one edge; the column beside it holds the caption (top) and the piece's QR (bottom)
    lay = card_layout(d.size, (h, h), flip=d.flip_side)
    assert lay.side and not lay.image.colliderect(lay.caption)
    assert {(0, 0, 0), (255, 255, 255)} <= colours_in(d.screen, lay.qr)
    assert len(colours_in(d.screen, lay.caption)) > 3  # anti-aliased caption text
    assert d.qrs._cache  # the QR codes were rendered once and cached


def test_tap_events_make_exactly_one_job_and_its_piece_shows_when_it_lands(store, opened):
    add_piece(store, solid(RED))
    clk = FakeClock()
    d = opened(store, clk)
    assert pump(d, lambda: d.card is not None, clock=clk)
    pygame.event.post(pygame.event.Event(pygame.MOUSEBUTTONUP, button=1, pos=(10, 10), touch=False))
    pygame.event.post(pygame.event.Event(pygame.FINGERUP, touch_id=1, finger_id=0, x=0.5, y=0.5, dx=0.0, dy=0.0))
    pygame.event.post(pygame.event.Event(pygame.KEYDOWN, key=pygame.K_SPACE, mod=0, unicode=" ", scancode=44))
    assert pump(d, lambda: d.tap_job is not None, clock=clk)
    assert d.state == "making"
    for _ in range(3):  # a visitor keeps tapping while the piece is being made
        pygame.event.post(pygame.event.Event(pygame.MOUSEBUTTONUP, button=1, pos=(10, 10), touch=False))
        pump(d, lambda: False, timeout=0.05, clock=clk, step=1.0)
    taps = store.jobs(source="tap")
    assert len(taps) == 1 and taps[0].status == "queued"
    assert taps[0].exhibit == "demo" and 0.5 <= taps[0].params["sigma"] <= 3.0  # drawn from the exhibit's range
    assert d.stats.taps == 1 and d.stats.taps_ignored >= 5

    job = store.claim(WORKER)
    assert job is not None and job.id == taps[0].id  # taps go first
    piece = finish_job(store, job, solid(GREEN))
    assert pump(d, lambda: d.card_piece_id == piece.id and d.state == "showing", clock=clk)
    assert near(center_color(d), GREEN)
    # once the tap's piece has landed, a new tap makes a new job
    clk.advance(5)
    pygame.event.post(pygame.event.Event(pygame.KEYDOWN, key=pygame.K_RETURN, mod=0, unicode="\r", scancode=40))
    assert pump(d, lambda: d.tap_job is not None and d.tap_job != job.id, clock=clk)
    assert len(store.jobs(source="tap")) == 2


def _tapped_and_claimed(store, opened):
    """A display showing a piece, tapped; the tap's job claimed by a worker with one blue frame shown."""
    add_piece(store, solid(RED))
    clk = FakeClock()
    d = opened(store, clk)
    assert pump(d, lambda: d.card is not None, clock=clk)
    d.tap(clk())
    assert pump(d, lambda: d.tap_job is not None, clock=clk)
    job = store.claim(WORKER)
    assert job is not None
    store.publish_frame(job.id, WORKER, jpeg(solid(BLUE, (96, 96))), step=10, total=100)
    assert pump(d, lambda: d.frame is not None and d.frame[0].step == 10, clock=clk)
    return d, clk, job


def test_making_shows_the_newest_progress_frame_and_bar(store, opened):
    d, clk, job = _tapped_and_claimed(store, opened)
    store.publish_frame(job.id, WORKER, jpeg(solid(MAGENTA, (96, 96))), step=50, total=100)
    assert pump(d, lambda: d.frame is not None and d.frame[0].step == 50, clock=clk)
    d.tick()
    w, h = d.size
    assert d.state == "making"
    assert near(d.screen.get_at((w // 2, d.frame_box[1] // 2)), MAGENTA, tol=20)
    m = max(8, round(h * 0.03))
    bar_y = h - m - max(6, h // 60) // 2 - 1
    assert near(d.screen.get_at((m + 20, bar_y)), ACCENT)  # the first half of the bar is filled
    assert not near(d.screen.get_at((w - 2 * m - round(w * 0.12) - 10, bar_y)), ACCENT)


def test_an_empty_or_cut_progress_frame_is_skipped(store, opened):
    # Live frames are written without an fsync: after a power cut one may be empty or cut short.
    d, clk, job = _tapped_and_claimed(store, opened)
    good = jpeg(solid(BLUE, (96, 96)))
    store.publish_frame(job.id, WORKER, b"", step=20, total=100)
    store.publish_frame(job.id, WORKER, good[: len(good) // 3], step=30, total=100)
    seen = d.loader.errors
    end = time.monotonic() + 1.5  # real time: the loader polls every 0.25 s on its own thread
    while time.monotonic() < end:
        clk.advance(0.05)
        d.tick()
        time.sleep(0.02)
    assert d.state == "making" and d.frame[0].step == 10  # the last good frame stays
    assert d.loader.errors == seen  # skipped as unreadable, not a loader failure
    store.publish_frame(job.id, WORKER, jpeg(solid(MAGENTA, (96, 96))), step=40, total=100)
    assert pump(d, lambda: d.frame is not None and d.frame[0].step == 40, clock=clk)


def test_worker_notice_follows_heartbeats(store, opened):
    add_piece(store, solid(RED))
    clk = FakeClock()
    d = opened(store, clk)
    assert pump(d, lambda: d.card is not None and d.status is not None, clock=clk)
    assert d.notice is not None and "warming up" in d.notice
    w, h = d.size
    corner = pygame.Rect(w * 3 // 4, 0, w // 4, h // 8)  # the notice sits in the top right corner
    with_notice = colours_in(d.screen, corner)
    store.worker_beat(WORKER, state="idle")
    assert pump(d, lambda: d.notice is None, clock=clk)
    d.tick()
    without = colours_in(d.screen, corner)
    assert len(with_notice) > len(without) + 2  # the notice's anti-aliased text is gone
    store.worker_gone(WORKER)
    assert pump(d, lambda: d.notice is not None, clock=clk)
    assert "offline" in d.notice and d.state == "showing"


def test_empty_archive_welcomes_and_leaves_when_the_first_piece_lands(store, opened):
    clk = FakeClock()
    d = opened(store, clk, width=320, height=240)
    assert pump(d, lambda: d.state == "welcome", clock=clk)
    d.tick()
    w, h = d.size
    middle = pygame.Rect(w // 2 - h // 6, h // 3, h // 3, h // 4)
    assert {(0, 0, 0), (255, 255, 255)} <= colours_in(d.screen, middle)  # the web app's QR code
    first = add_piece(store, solid(BLUE))
    assert pump(d, lambda: d.state == "showing" and d.card_piece_id == first.id, clock=clk)
    assert near(center_color(d), BLUE)


def test_a_bad_piece_row_goes_to_failsafe_and_the_show_comes_back(store, opened):
    add_piece(store, solid(RED))
    clk = FakeClock()
    d = opened(store, clk, failsafe_seconds=2.0)
    assert pump(d, lambda: d.card is not None, clock=clk)
    bad = add_piece(store, solid(BLUE), sigma="not a number")  # a row no caption can be made from
    assert bad.sigma == "not a number"
    assert pump(d, lambda: d.state == "failsafe", clock=clk, step=0.0)
    assert d.stats.state_errors == 1
    clk.advance(2.5)
    assert pump(d, lambda: d.state == "showing", clock=clk)
    for _ in range(20):
        d.tick()
    assert d.state == "showing" and d.stats.state_errors == 1
    assert near(center_color(d), RED)  # the last good piece
    # the bad piece is skipped when the show cycles
    d.cfg = show_config(store.root, hold_seconds=0.5)
    clk.advance(2)
    pump(d, lambda: False, timeout=0.5, clock=clk, step=0.3)
    assert d.stats.state_errors == 1 and d.card_piece_id != bad.id
    assert d.stats.states_visited[:3] == ["showing", "failsafe", "showing"]


def test_a_broken_image_file_is_skipped(store, opened):
    good = add_piece(store, solid(RED))
    clk = FakeClock()
    d = opened(store, clk)
    assert pump(d, lambda: d.card_piece_id == good.id, clock=clk)
    broken = add_piece(store, solid(BLUE))
    store.path(broken.image_path).write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    assert pump(d, lambda: d.loader.errors >= 1, clock=clk)
    for _ in range(10):
        d.tick()
    assert d.state == "showing" and d.card_piece_id == good.id
    assert near(center_color(d), RED)


def test_crossfade_blends_the_two_pieces(store, opened):
    add_piece(store, solid(RED))
    clk = FakeClock()
    d = opened(store, clk, crossfade_seconds=1.0)
    assert pump(d, lambda: d.card is not None, clock=clk)
    clk.advance(2.0)
    d.tick()
    assert near(center_color(d), RED)
    blue = add_piece(store, solid(BLUE))
    assert pump(d, lambda: d.card_piece_id == blue.id, clock=clk, step=0.0)
    clk.advance(0.25)  # a quarter in: the pictures are half blended
    d.tick()
    mid = center_color(d)
    expect = tuple((a + b) // 2 for a, b in zip(RED, BLUE))
    assert near(mid, expect, tol=10), (mid, expect)
    clk.advance(0.5)  # three quarters in: the new picture is whole; only its caption is still fading in
    d.tick()
    assert near(center_color(d), BLUE)
    clk.advance(0.35)
    d.tick()
    assert near(center_color(d), BLUE)


def test_cycles_through_recent_pieces_when_nothing_lands(store, opened):
    older = add_piece(store, solid(RED))
    newest = add_piece(store, solid(BLUE))
    clk = FakeClock()
    d = opened(store, clk, hold_seconds=3.0)
    assert pump(d, lambda: d.card_piece_id == newest.id, clock=clk, step=0.0)
    clk.advance(3.5)
    assert pump(d, lambda: d.card_piece_id == older.id, clock=clk, step=0.0)
    assert near(center_color(d), RED)
    clk.advance(3.5)
    assert pump(d, lambda: d.card_piece_id == newest.id, clock=clk, step=0.0)  # wraps around


def test_quit_keys_windowed_and_fullscreen(store, opened):
    d = opened(store)
    d.handle_event(pygame.event.Event(pygame.KEYDOWN, key=pygame.K_ESCAPE, mod=0), 0.0)
    assert not d.running
    d.close()
    f = opened(store, fullscreen=True)
    assert pygame.mouse.get_visible() is False
    for key, mod in ((pygame.K_ESCAPE, 0), (pygame.K_q, 0), (pygame.K_q, pygame.KMOD_LCTRL)):
        f.handle_event(pygame.event.Event(pygame.KEYDOWN, key=key, mod=mod), 0.0)
        assert f.running  # a visitor's key press does not end the show
    f.handle_event(pygame.event.Event(pygame.KEYDOWN, key=pygame.K_q, mod=pygame.KMOD_LCTRL | pygame.KMOD_LSHIFT), 0.0)
    assert not f.running


def test_run_entry_point_counts_frames_and_saves_a_screenshot(store, tmp_path):
    add_piece(store, solid(GREEN))
    shot = tmp_path / "shot.png"
    stats = run(show_config(store.root), store, max_frames=40, screenshot=shot)
    assert stats.ticks == 40 and 1 <= stats.frames < 40  # it draws on change, not every loop
    assert "showing" in stats.states_visited
    assert shot.exists() and stats.worst_ms >= stats.p99_ms >= 0 and stats.cpu_seconds > 0
    stats = run(show_config(store.root), store, max_seconds=0.3)
    assert stats.frames > 0 and stats.seconds >= 0.3


def test_prompts_in_other_scripts_are_drawn_not_boxed():
    import pygame

    from kiosk.display import render

    if render.find_font() is None:
        pytest.skip("no caption font (Debian: fonts-dejavu-core) on this machine")
    pygame.font.init()
    fonts = render.Fonts()
    for word in ("Жar", "שער", "Ωmega"):  # Cyrillic, Hebrew, Greek: all in the caption family
        assert fonts.get(24, word) is fonts.get(24, "A") and fonts.get(24, word).covers(word)
    glyphs = [pygame.image.tobytes(render.text(fonts, c, 24), "RGBA") for c in "אבג"]
    assert len(set(glyphs)) == 3, "different Hebrew letters drew the same (missing-glyph) box"
    # pygame's bundled font alone cannot: all three come out as the same box
    bundled = [pygame.image.tobytes(pygame.font.Font(None, 24).render(c, True, (255, 255, 255)), "RGBA") for c in "אבג"]
    assert len(set(bundled)) == 1


def test_the_display_never_imports_torch(tmp_path):
    """The display runs beside the worker on a small machine: it must not load torch (seconds and a GiB)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    code = ("import sys; from pathlib import Path; from exhibits.show import ShowConfig; from kiosk.display import run; "
            f"run(ShowConfig(data_dir=Path({str(tmp_path)!r}), fullscreen=False, width=160, height=90), max_seconds=1.0); "
            "assert 'torch' not in sys.modules, 'torch imported'")
    env = {**os.environ, "SDL_VIDEODRIVER": "dummy", "SDL_AUDIODRIVER": "dummy"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env,
                       cwd=str(Path(__file__).resolve().parents[1]))
    assert r.returncode == 0, r.stderr[-2000:]


def test_a_tap_goes_to_an_exhibit_the_worker_can_make(store, opened, tmp_path):
    add_piece(store, solid(RED))
    clk = FakeClock()
    d = opened(store, clk, exhibits=("strange-attractions", "demo"))
    assert pump(d, lambda: d.card is not None, clock=clk)
    # the worker found no StyleGAN weights; an old tap for that exhibit is still queued
    store.set_setting("exhibits_available", {"strange-attractions": "weights missing", "demo": "ok"})
    stale = store.submit("strange-attractions", source="tap")
    pygame.event.post(pygame.event.Event(pygame.KEYDOWN, key=pygame.K_SPACE, mod=0, unicode=" ", scancode=44))
    assert pump(d, lambda: d.tap_job is not None, clock=clk)
    assert d.tap_job != stale.id and store.get_job(d.tap_job).exhibit == "demo"
