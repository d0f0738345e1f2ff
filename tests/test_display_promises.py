"""What the screen promises the people in front of it, against a real store and a real (dummy-driver) window:
a visitor's piece stays, a tap goes straight from its live frames to its piece, captions read from 3 m,
a fault never blanks or ends the show, and the loop sleeps when nothing moves."""
from __future__ import annotations

import os
import shutil
import time

import pytest

from tests.display_helpers import (WORKER, FakeClock, add_piece, center_color, finish_job, jpeg, near,  # noqa: F401
                                   opened, pump, show_config, solid, store)

import pygame  # noqa: E402  (display_helpers selects the dummy video driver first)

from exhibits import wake  # noqa: E402
from exhibits.config import ConfigError  # noqa: E402
from exhibits.show import ShowConfig, is_open, load_show, parse_opening_hours  # noqa: E402
from exhibits.store import Store  # noqa: E402
from kiosk.display import Display, render, run  # noqa: E402
from kiosk.display.app import EXIT_STAFF_QUIT  # noqa: E402
from kiosk.display.loader import FrameReady, Loader, Status  # noqa: E402

RED, BLUE, GREEN, YELLOW, CYAN, WHITE = (210, 30, 40), (30, 60, 220), (40, 200, 60), (230, 220, 40), \
    (40, 210, 220), (250, 250, 250)


def asked_piece(store: Store, colour, source: str = "visitor", prompt: str = "a visitor's prompt"):
    """A visitor's (or a tap's) job, rendered: its piece lands in the archive now."""
    job = store.submit("demo", prompt_text=prompt, prompts=[(prompt, 1.0)], source=source)
    claimed = store.claim(WORKER)
    assert claimed is not None and claimed.id == job.id
    return finish_job(store, claimed, solid(colour), prompt)


def run_for(d: Display, clk: FakeClock, seconds: float, step: float = 0.25, each=None) -> None:
    """Advance the fake clock by ``seconds`` in steps, ticking (and letting the loader work) at each."""
    t = 0.0
    while t < seconds:
        if each is not None:
            each(t)
        pump(d, lambda: False, timeout=0.03, clock=clk, step=0.0)
        clk.advance(step)
        t += step


# -- dwell --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("source", ["visitor", "tap"])
def test_an_asked_for_piece_holds_the_screen_against_a_busy_playlist(store, opened, source):
    add_piece(store, solid(RED))
    clk = FakeClock()
    d = opened(store.root, clk, hold_seconds=4.0, dwell_seconds=10.0)
    assert pump(d, lambda: d.card is not None, clock=clk, step=0.0)
    mine = asked_piece(store, GREEN, source)
    assert pump(d, lambda: d.card_piece_id == mine.id, clock=clk, step=0.0)
    playlist = []

    def busy(t: float) -> None:  # a playlist piece lands every 1.5 s of show time
        if int(t / 1.5) >= len(playlist):
            playlist.append(add_piece(store, solid(BLUE), prompt=f"playlist {len(playlist)}"))

    run_for(d, clk, 9.5, each=busy)
    assert len(playlist) >= 6
    assert d.card_piece_id == mine.id and near(center_color(d), GREEN), "a playlist piece pre-empted it"
    run_for(d, clk, 1.5)
    assert pump(d, lambda: d.card_piece_id == playlist[-1].id, clock=clk, step=0.0)  # then the newest playlist piece


def test_finished_visitors_pieces_queue_for_their_turn(store, opened):
    add_piece(store, solid(RED))
    clk = FakeClock()
    d = opened(store.root, clk, hold_seconds=3.0, dwell_seconds=5.0)
    assert pump(d, lambda: d.card is not None, clock=clk, step=0.0)
    first, second, third = (asked_piece(store, c, prompt=f"visitor {i}") for i, c in enumerate((GREEN, YELLOW, CYAN)))
    after = add_piece(store, solid(BLUE), prompt="playlist, after them")
    # all four have reached the display (however loaded the machine) before show time moves on
    assert pump(d, lambda: d.card_piece_id == first.id and len(d.pending) == 2 and d.incoming is not None
                and d.incoming.piece.id == after.id, clock=clk, step=0.0, timeout=20)
    seen = []

    def note(_t: float) -> None:
        if d.card_piece_id is not None and (not seen or seen[-1] != d.card_piece_id):
            seen.append(d.card_piece_id)

    run_for(d, clk, 20.0, each=note)
    asked = list(dict.fromkeys(pid for pid in seen if pid in (first.id, second.id, third.id)))
    assert asked == [first.id, second.id, third.id], seen  # each in turn, none skipped
    assert after.id in seen[seen.index(third.id):]  # and then the show goes on


# -- taps ---------------------------------------------------------------------------------------------

def test_a_tap_goes_from_its_live_frames_straight_to_its_piece_never_back_to_the_old_card(store, opened):
    add_piece(store, solid(RED), prompt="the old card")
    clk = FakeClock()
    d = opened(store.root, clk, crossfade_seconds=1.0)
    assert pump(d, lambda: d.card is not None and d.prev_card is None, clock=clk, step=0.1)
    d.tap(clk())
    assert pump(d, lambda: d.tap_job is not None and d.state == "making", clock=clk, step=0.0)
    job = store.claim(WORKER)
    assert job is not None and job.id == d.tap_job
    store.publish_frame(job.id, WORKER, jpeg(solid(BLUE, (96, 96))), step=90, total=100)
    assert pump(d, lambda: d.frame is not None and d.frame[0].job_id == job.id, clock=clk, step=0.0)
    d.tick()
    w, _ = d.size
    probe = (w // 2, d.frame_box[1] // 2)
    assert near(d.screen.get_at(probe), BLUE, tol=20)
    piece = finish_job(store, job, solid(GREEN))
    colours = []
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not (d.card_piece_id == piece.id and d.prev_card is None):
        d.tick()
        colours.append(tuple(d.screen.get_at(probe))[:3])
        clk.advance(0.05)
        time.sleep(0.002)
    assert d.card_piece_id == piece.id and near(colours[-1], GREEN)
    assert not [c for c in colours if near(c, RED, tol=60)], "the old card came back between live view and piece"
    # every frame on the way is the live frame, the new piece, or a blend of the two
    for c in colours:
        assert any(near(c, tuple(round(b + (g - b) * k / 20) for b, g in zip(BLUE, GREEN)), tol=14)
                   for k in range(21)), c


def test_the_worker_wakes_the_loader_without_waiting_for_its_poll(store):
    add_piece(store, solid(RED))
    cfg = show_config(store.root)
    loader = Loader(cfg, store.root, piece_box=(320, 180), frame_box=(320, 150), poll_seconds=3600.0)
    loader.start()
    try:
        while not isinstance(loader.outbox.get(timeout=60), Status):
            pass  # its first poll is done (and its socket bound before it); the next is an hour away
        job = store.submit("demo", prompt_text="live", source="tap")
        store.claim(WORKER)
        store.publish_frame(job.id, WORKER, jpeg(solid(BLUE, (64, 64))), step=1, total=10)
        loader.want_frames(True)
        t0 = time.monotonic()
        assert wake.notify(store.root, "frame")
        got = None
        while time.monotonic() - t0 < 60 and got is None:  # its next poll would be an hour away
            msg = loader.outbox.get(timeout=60)
            got = msg if isinstance(msg, FrameReady) else None
        assert got is not None and got.progress.job_id == job.id
        assert loader.wakes >= 1
    finally:
        loader.stop()


# -- faults -------------------------------------------------------------------------------------------

def test_a_broken_newest_image_shows_the_newest_piece_that_can_be_shown(store, opened):
    pieces = [add_piece(store, solid(c), prompt=f"piece {i}") for i, c in enumerate((RED, GREEN, YELLOW))]
    broken = add_piece(store, solid(BLUE))
    store.path(broken.image_path).write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    clk = FakeClock()
    d = opened(store.root, clk)
    assert pump(d, lambda: d.card_piece_id == pieces[-1].id, clock=clk, timeout=3.0)
    assert d.state == "showing" and near(center_color(d), YELLOW)
    assert "welcome" not in d.stats.states_visited


def _damage(db, how: str) -> None:
    data = bytearray(db.read_bytes())
    if how == "truncated":
        db.write_bytes(bytes(data[: len(data) // 3]))
    else:  # random bytes over every page but the first (the header stays, the b-trees do not)
        rnd = os.urandom(len(data))
        db.write_bytes(bytes(data[:4096]) + rnd[4096:])


@pytest.mark.parametrize("how", ["truncated", "random-bytes"])
def test_a_damaged_store_never_ends_the_show_and_it_recovers_by_itself(tmp_path, opened, how):
    root = tmp_path / "archive"
    s = Store(root)
    good = add_piece(s, solid(GREEN))
    s.close()
    db = root / "kiosk.sqlite3"
    for extra in ("-wal", "-shm"):
        assert not (root / f"kiosk.sqlite3{extra}").exists() or True
    backup = tmp_path / "backup.sqlite3"
    shutil.copy(db, backup)
    _damage(db, how)
    # started on the damaged archive: no exception, the failsafe screen, and it keeps trying
    stats = run(show_config(root, drift_pixels=0), max_seconds=0.5)
    assert stats.store_faults >= 1 and "failsafe" in stats.states_visited
    clk = FakeClock()
    d = opened(root, clk, failsafe_seconds=1.0)
    assert pump(d, lambda: d.state == "failsafe" and d.status is not None and not d.status.store_ok,
                clock=clk, step=0.1)
    for _ in range(30):
        d.tick()
        clk.advance(0.5)
    assert d.running and d.state == "failsafe"
    shutil.copy(backup, db)  # staff restore the archive: the show comes back without a restart
    assert pump(d, lambda: d.card_piece_id == good.id, clock=clk, step=0.1, timeout=15)
    assert d.state == "showing" and near(center_color(d), GREEN)


def test_damage_while_showing_keeps_the_picture_on_screen(tmp_path, opened):
    root = tmp_path / "archive"
    s = Store(root)
    good = add_piece(s, solid(GREEN))
    clk = FakeClock()
    d = opened(root, clk)
    assert pump(d, lambda: d.card_piece_id == good.id, clock=clk)
    s.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    s.close()
    db = root / "kiosk.sqlite3"
    backup = tmp_path / "backup.sqlite3"
    shutil.copy(db, backup)
    _damage(db, "random-bytes")
    (root / "kiosk.sqlite3-shm").unlink(missing_ok=True)
    for _ in range(40):  # whether the loader's connection still has the pages cached or fails now
        d.tick()
        clk.advance(0.5)
        time.sleep(0.01)
    assert d.running and d.state == "showing" and d.card_piece_id == good.id and near(center_color(d), GREEN)
    if d.loader.store_faults:
        assert d.notice is not None and "archive" in d.notice
    shutil.copy(backup, db)
    assert pump(d, lambda: d.status is not None and d.status.store_ok, clock=clk, step=0.1, timeout=15)


# -- typography ----------------------------------------------------------------------------------------

def _fonts() -> render.Fonts:
    if render.find_font() is None:
        pytest.skip("no caption font (Debian: fonts-dejavu-core) on this machine")
    pygame.font.init()
    return render.Fonts()


def test_a_caption_cut_with_an_ellipsis_is_drawn_in_one_font():
    fonts = _fonts()
    prompt = "a lighthouse made of glass at dusk, drawn in ink by a patient hand on a windy afternoon " * 3
    face = fonts.get(30, prompt)
    lines = render.wrap(face, prompt, 300, 3)
    assert lines[-1].endswith("…")
    assert fonts.get(30, lines[-1]) is fonts.get(30, lines[0]) is face  # no other font for the last line
    assert face.covers("…·—“”")


def test_captions_are_kerned_sized_for_three_metres_and_say_each_label_once(store):
    fonts = _fonts()
    face = fonts.get(60, "AV")
    assert face.size("AV")[0] < face.size("A")[0] + face.size("V")[0]  # kerning pairs applied
    piece = add_piece(store, solid(RED), prompt="", label="weights-free pattern network (no trained model)",
                      series="Weights-free demo")
    piece = store.get_piece(piece.id)
    object.__setattr__(piece, "title", "Attractors (weights-free demo)")
    lines = render.caption_lines(piece)
    text = " / ".join(lines).lower()
    assert text.count("weights-free") == 1, lines
    assert "no trained model" in text and "attractors" in text
    # the smallest text: capitals at least 2.55% of the screen height (20 arc-minutes at 3 m on a 55-inch 16:9)
    for height in (720, 1080):
        small = fonts.get(round(height * render.MIN_TEXT), "H")
        cap = small.render("H", (255, 255, 255)).get_bounding_rect().height
        assert cap / height >= 0.0255, (height, cap)


def test_a_long_prompt_caption_fits_its_column(store):
    fonts = _fonts()
    pygame.display.init()
    pygame.display.set_mode((1280, 720))
    try:
        long = "Entrance to the Heaven realm by James Gurney, " * 8
        piece = asked_piece(store, GREEN, prompt=long)
        lay = render.card_layout((1280, 720), (720, 720))
        lines = render.caption_block(fonts, piece, lay.caption.width, 720)
        assert all(s.get_width() <= lay.caption.width for s in lines)
        assert any(render.wrap(fonts.get(33, long), long, lay.caption.width, 5)[-1].endswith("…") for _ in [0])
    finally:
        pygame.display.quit()


# -- the loop sleeps when nothing moves ---------------------------------------------------------------

def test_nothing_is_drawn_while_nothing_changes_and_every_fade_frame_is(store, opened):
    add_piece(store, solid(RED))
    clk = FakeClock()
    d = opened(store.root, clk, crossfade_seconds=1.0)
    assert pump(d, lambda: d.card is not None and d.prev_card is None, clock=clk, step=0.1)
    drawn = d.stats.frames
    for _ in range(50):
        d.tick()
        clk.advance(0.1)
    assert d.stats.frames == drawn  # a still picture is not drawn again
    blue = add_piece(store, solid(BLUE))
    assert pump(d, lambda: d.card_piece_id == blue.id, clock=clk, step=0.0)
    before = d.stats.frames
    for _ in range(10):
        d.tick()
        clk.advance(0.05)
    assert d.stats.frames - before == 10  # during the fade, every loop draws


# -- exhibition features -------------------------------------------------------------------------------

def test_attract_mode_after_inactivity_and_a_touch_ends_it(store, opened):
    add_piece(store, solid(RED))
    clk = FakeClock()
    d = opened(store.root, clk, attract_seconds=30.0)
    assert pump(d, lambda: d.card is not None, clock=clk, step=0.0)
    run_for(d, clk, 20.0, step=1.0)
    assert d.state == "showing"
    run_for(d, clk, 11.0, step=1.0)
    assert d.state == "attract"
    d.tick()
    w, h = d.size
    band = pygame.Rect(0, h // 2, w, h // 2)
    assert len({tuple(d.screen.get_at((x, y)))[:3] for x in range(0, w, 3) for y in range(band.top, h, 3)}) > 5
    pygame.event.post(pygame.event.Event(pygame.FINGERUP, touch_id=1, finger_id=0, x=0.5, y=0.5, dx=0.0, dy=0.0))
    assert pump(d, lambda: d.state == "making", clock=clk, step=0.0)  # the touch is a tap


def test_opening_hours_blank_the_screen_and_ignore_taps_at_night(store, opened):
    add_piece(store, solid(RED))
    clk = FakeClock()
    is_open_now = [False]
    d = opened(store.root, clk, open_now=lambda: is_open_now[0], opening_hours=((600, 1080),))
    assert pump(d, lambda: d.state == "night", clock=clk, step=0.0)
    d.tick()
    assert center_color(d) == (0, 0, 0)
    d.tap(clk())
    pump(d, lambda: False, timeout=0.2, clock=clk, step=0.0)
    assert store.jobs(source="tap") == []  # nothing is made at night
    is_open_now[0] = True
    clk.advance(11)
    assert pump(d, lambda: d.state == "showing" and d.card is not None, clock=clk, step=0.0)
    assert near(center_color(d), RED)


def test_the_playlist_pauses_outside_opening_hours(store):
    from exhibits.config import load_exhibits
    from exhibits.playlist import Playlist
    from renderer.worker import Worker

    hours = ((0, 1),) if time.localtime().tm_hour * 60 + time.localtime().tm_min not in (0,) else ((2, 3),)
    closed = ShowConfig(data_dir=store.root, opening_hours=hours, playlist_interval=0.0, queue_depth=2)
    assert not is_open(closed)
    w = Worker(closed, store, worker_id=WORKER)
    w._playlist = Playlist(load_exhibits(["demo"]))
    w._top_up()
    assert store.count_queued("playlist") == 0
    w.cfg = ShowConfig(data_dir=store.root, playlist_interval=0.0, queue_depth=2)
    w._top_up()
    assert store.count_queued("playlist") == 2


def test_staff_overlay_by_key_or_corner_press_and_a_safe_quit(store, opened):
    add_piece(store, solid(RED))
    clk = FakeClock()
    d = opened(store.root, clk, fullscreen=True)
    assert pygame.mouse.get_visible() is False  # no pointer; touches still count (the press below)
    assert pump(d, lambda: d.card is not None, clock=clk, step=0.0)
    pygame.event.post(pygame.event.Event(pygame.FINGERDOWN, touch_id=1, finger_id=0, x=0.01, y=0.01, dx=0, dy=0))
    pump(d, lambda: False, timeout=0.05, clock=clk, step=0.0)
    clk.advance(3.5)
    pygame.event.post(pygame.event.Event(pygame.FINGERUP, touch_id=1, finger_id=0, x=0.01, y=0.01, dx=0, dy=0))
    assert pump(d, lambda: d.staff.shown, clock=clk, step=0.0)
    assert store.jobs(source="tap") == []  # the long press was not a visitor's tap
    assert any("renderer" in line for line in d.staff.lines(d, clk()))
    d.handle_event(pygame.event.Event(pygame.KEYDOWN, key=pygame.K_ESCAPE, mod=0), clk())
    assert not d.staff.shown and d.running
    d.handle_event(pygame.event.Event(pygame.KEYDOWN, key=pygame.K_F12, mod=0), clk())
    assert d.staff.shown
    d.handle_event(pygame.event.Event(pygame.KEYDOWN, key=pygame.K_q, mod=0), clk())
    assert d.running  # one press asks "really?"
    d.handle_event(pygame.event.Event(pygame.KEYDOWN, key=pygame.K_q, mod=0), clk())
    assert not d.running and d.exit_code == EXIT_STAFF_QUIT


def test_portrait_rotation_draws_a_portrait_layout_turned_onto_the_screen(store, opened):
    add_piece(store, solid(GREEN), prompt="a portrait of the sea")
    clk = FakeClock()
    d = opened(store.root, clk, rotate=90, width=320, height=180, display_index=3)  # no 4th monitor: the first
    assert d.size == (180, 320) and d.window.get_size() == (320, 180)
    assert pump(d, lambda: d.card is not None, clock=clk, step=0.0)
    d.tick()
    lay = render.card_layout(d.size, (180, 180))
    assert not lay.side and lay.image.top == 0 and lay.caption.top >= lay.image.bottom
    # the picture (top of the portrait canvas) lands on the right of the turned screen
    assert near(d.window.get_at((220, 90)), GREEN) and not near(d.window.get_at((20, 90)), GREEN)


def test_show_config_checks_the_new_display_keys(tmp_path):
    f = tmp_path / "kiosk.toml"
    f.write_text('[show]\nrotate = 90\ndwell_seconds = 30\nopening_hours = ["10:00-13:00", "14:00-02:00"]\n'
                 'display_index = 1\nhide_cursor = false\nattract_seconds = 0\n')
    cfg = load_show(f)
    assert cfg.rotate == 90 and cfg.dwell == 30 and cfg.opening_hours == ((600, 780), (840, 120))
    assert ShowConfig(hold_seconds=12).dwell == 12
    for bad, key in (("rotate = 45", "show.rotate"), ('opening_hours = "25:00-18:00"', "show.opening_hours"),
                     ("dwell_seconds = -1", "show.dwell_seconds"), ('opening_hours = "10-18"', "show.opening_hours")):
        f.write_text(f"[show]\n{bad}\n")
        with pytest.raises(ConfigError) as err:
            load_show(f)
        assert key in str(err.value) and str(f) in str(err.value)
    assert parse_opening_hours("") == ()


def test_a_tap_nudges_the_worker_to_claim_its_job_at_once(store, opened):
    add_piece(store, solid(RED))
    worker_side = wake.Listener(store.root, "worker")
    try:
        clk = FakeClock()
        d = opened(store.root, clk)
        assert pump(d, lambda: d.card is not None, clock=clk, step=0.0)
        d.tap(clk())
        assert d.state == "showing"
        d.tick()
        assert d.state == "making"  # the screen answers in the same loop, before the job is even queued
        assert worker_side.wait(5.0) == "tap"
        assert store.jobs(source="tap")
    finally:
        worker_side.close()


def test_burn_in_protection_drifts_slowly_and_fades_through_black_now_and_then(store, opened):
    add_piece(store, solid(RED))
    clk = FakeClock()
    d = opened(store.root, clk, drift_pixels=6, refresh_minutes=1.0, crossfade_seconds=1.0, hold_seconds=1e6)
    assert pump(d, lambda: d.card is not None and d.prev_card is None, clock=clk, step=0.1)
    seen = set()
    for _ in range(60):  # an hour of show time, a minute per loop
        clk.advance(60)
        d.tick()
        seen.add(d.drift)
        assert max(abs(v) for v in d.drift) <= 6
    assert len(seen) > 10  # it wanders
    w, h = d.window.get_size()
    dx, dy = d.drift
    assert near(d.window.get_at((w // 2, h // 2)), RED)
    if dx > 0:
        assert tuple(d.window.get_at((0, h // 2)))[:3] == (0, 0, 0)  # the uncovered edge is black
    blue = add_piece(store, solid(BLUE))  # over a minute since the last fade through black
    assert pump(d, lambda: d.card_piece_id == blue.id, clock=clk, step=0.0)
    assert d.fade_black
    clk.advance(0.5)
    d.tick()
    assert sum(center_color(d)) < 40  # half-way: black, not a blend of the two pieces


def test_without_the_caption_font_the_bundled_one_draws_every_caption_glyph(monkeypatch, store):
    monkeypatch.delenv("KIOSK_FONT", raising=False)
    monkeypatch.setattr(render, "FAMILY", {False: ("/nonexistent/DejaVuSans.ttf",), True: ("/nonexistent/Bold.ttf",)})
    assert render.find_font() is None
    pygame.font.init()
    fonts = render.Fonts()
    face = fonts.get(30, "Weights-free demo")
    assert face.path is None and face.covers("sigma 1.70 · seed 9 …")  # pygame's own font, ellipsis included
    lines = render.wrap(face, "a very long prompt about lighthouses and the sea " * 4, 200, 2)
    assert lines[-1].endswith("…") and fonts.get(30, lines[-1]) is face
