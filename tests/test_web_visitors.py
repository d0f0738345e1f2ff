"""What visitors still missed: realm and mood pickers, a wait estimate, "my pieces", the on-screen notice,
and moderation that holds (never drops) what the word lists flag."""
from __future__ import annotations

import pytest
from PIL import Image

from exhibits.show import ShowConfig
from kiosk.web import create_app
from tests.web_helpers import api_submit, csrf, error_text, make_piece


def _app(store, **kw):
    return create_app(ShowConfig(data_dir=store.root, **({"exhibits": ("demo",)} | kw)), store, testing=True)


def _post(c, **form):
    return c.post("/submit", data={"csrf_token": csrf(c), **form})


def test_doorways_realm_form_fills_the_template(store):
    c = _app(store, exhibits=("doorways", "demo")).test_client()
    html = c.get("/submit").get_data(as_text=True)
    assert "Entrance to the" in html and 'name="realm_left"' in html and 'name="pair"' in html
    assert "Afterlife: Heaven | Hell" in html
    r = _post(c, exhibit="doorways", realm_left="Ocean", realm_right="Glass Desert")
    assert r.status_code == 303
    job = store.jobs(source="visitor")[-1]
    assert job.prompts == (("Entrance to the Ocean realm by James Gurney", 1.0),
                           ("Entrance to the Glass Desert realm by James Gurney", 1.0))
    assert job.prompt_text == "Ocean / Glass Desert"
    r = _post(c, exhibit="doorways", pair="0")
    assert r.status_code == 303
    assert store.jobs(source="visitor")[-1].prompts[1][0] == "Entrance to the Hell realm by James Gurney"
    for bad, why in (({"pair": "999"}, "pair must be one of"), ({"pair": "１"}, "pair must be one of"),
                     ({"realm_left": "x" * 41}, "the first realm is 41 characters"),
                     ({"realm_left": "a:1"}, "cannot contain"), ({"realm_right": "bad\u202e"}, "second realm contains")):
        r = _post(c, exhibit="doorways", **bad)
        assert r.status_code == 400 and why in error_text(r.get_data(as_text=True)), bad


def test_mood_picker_sets_sigma_across_the_exhibits_range(store):
    c = _app(store).test_client()  # demo: sigma 0.5 .. 3.0
    html = c.get("/submit").get_data(as_text=True)
    assert 'type="range" name="mood"' in html and "calm" in html and "wild" in html
    for mood, sigma in (("0", 0.5), ("100", 3.0), ("50", 1.75)):
        assert _post(c, mood=mood).status_code == 303
        job = store.jobs(source="visitor")[-1]
        assert job.params["sigma"] == pytest.approx(sigma) and job.params["mood"] == int(mood)
    assert store.jobs(source="visitor")[0].prompt_text == "Mood: calm"
    assert store.jobs(source="visitor")[1].prompt_text == "Mood: wild"
    assert _post(c, mood="50", prompt="a moth").status_code == 303  # words and a mood together
    assert store.jobs(source="visitor")[-1].prompt_text == "a moth"
    for bad in ("101", "-1", "abc", "５"):
        r = _post(c, mood=bad)
        assert r.status_code == 400 and "mood must be a whole number" in error_text(r.get_data(as_text=True))


def _finish(store, seconds, exhibit="demo"):
    store.submit(exhibit, prompt_text="measured", source="playlist", priority=99)
    claimed = store.claim("w", exhibits=[exhibit])
    store.add_piece(claimed, "w", Image.new("RGB", (8, 8)), {"generator": "default", "render_seconds": seconds})


def test_wait_estimate_comes_from_measured_render_times(store):
    c = _app(store).test_client()
    first = api_submit(c, {"prompt": "first"}).get_json()
    assert first["wait_seconds"] is None and first["wait_text"] is None  # nothing measured yet
    for s in (50.0, 60.0, 70.0):
        _finish(store, s)
    second = api_submit(c, {"prompt": "second"}).get_json()
    j1 = c.get(f"/api/job/{first['token']}").get_json()
    j2 = c.get(f"/api/job/{second['token']}").get_json()
    assert j1["wait_seconds"] == 60.0 and j2["wait_seconds"] == 120.0
    assert j2["wait_text"] == "Ready in about 2 minutes."
    running = store.claim("w")
    store.heartbeat(running.id, "w", step=3, total=4)
    assert c.get(f"/api/job/{second['token']}").get_json()["wait_seconds"] == 75.0  # 15 s left + 60 s
    assert "about a minute" in c.get(f"/job/{second['token']}").get_data(as_text=True)


def test_my_pieces_from_the_visitor_cookie_and_the_on_screen_notice(store):
    app = _app(store)
    mine, other = app.test_client(), app.test_client()
    assert "Nothing sent from this phone yet" in mine.get("/mine").get_data(as_text=True)
    a = api_submit(mine, {"prompt": "my moth"}).get_json()
    api_submit(mine, {"prompt": "my lantern"})
    api_submit(other, {"prompt": "not mine"})
    page = mine.get("/mine").get_data(as_text=True)
    assert "my moth" in page and "my lantern" in page and "not mine" not in page
    assert page.index("my lantern") < page.index("my moth")  # newest first
    job = store.claim("w")
    assert job.prompt_text == "my moth"
    home = mine.get("/").get_data(as_text=True)
    assert "your piece “my moth” is being made right now" in home and f"/job/{a['token']}" in home
    assert "is being made right now" not in other.get("/").get_data(as_text=True)
    status = mine.get(f"/job/{a['token']}").get_data(as_text=True)
    assert 'id="onscreen"' in status and "Look at the screen" in status
    store.add_piece(job, "w", Image.new("RGB", (8, 8)), {"generator": "default", "label": "L"})
    page = mine.get("/mine").get_data(as_text=True)
    assert "/thumb.jpg" in page and "Done! Your piece is ready." in page


def test_status_is_announced_and_taps_are_big_enough(store):
    import re
    from pathlib import Path

    c = _app(store).test_client()
    token = api_submit(c, {"prompt": "aria"}).get_json()["token"]
    html = c.get(f"/job/{token}").get_data(as_text=True)
    assert re.search(r'id="status"[^>]*aria-live="polite"', html)
    css = (Path(__file__).parents[1] / "kiosk/web/static/style.css").read_text()
    assert "min-height: 40px" not in css.split("/* phones at a venue")[1]
    for rule in (".top nav a, .top nav button.link { min-height: 44px; }", ".button.small { min-height: 44px; }",
                 "min-height: 44px; padding: 0 4px;"):
        assert rule in css


@pytest.mark.parametrize("text", ["f*ck the queue", "5h1t storm", "a FUUUCK", "s h i t", "the n a z i garden",
                                  "my neighbour Mr Blobby"])
def test_flagged_prompts_are_held_for_staff_with_the_reason_and_the_visitor_is_told(store, text):
    app = _app(store, staff_password="hunter2", blocked_words=("Mr Blobby",))
    c = app.test_client()
    r = _post(c, prompt=text)
    assert r.status_code == 303
    job = store.jobs(source="visitor")[-1]
    assert job.status == "held" and store.claim("w") is None  # not on the screen, not dropped
    assert store.held_reason(job.id)
    assert "waiting for a member of staff" in c.get(r.headers["Location"]).get_data(as_text=True)
    staff = app.test_client()
    tok = csrf(staff, "/staff/login")
    staff.post("/staff/login", data={"password": "hunter2", "csrf_token": tok})
    assert "held: matched" in staff.get("/staff/").get_data(as_text=True)


def test_clean_prompts_go_straight_to_the_queue(store):
    c = _app(store, blocked_words=("tax",)).test_client()
    for text in ("Scunthorpe at dawn", "a cockpit of glass", "taxes and lighthouses", "assassin bugs"):
        assert _post(c, prompt=text).status_code == 303
    assert {j.status for j in store.jobs(source="visitor")} == {"queued"}
