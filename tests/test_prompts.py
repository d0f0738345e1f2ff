import random

import pytest

from exhibits.config import load_exhibits
from exhibits.playlist import Playlist, spec_for
from exhibits.prompts import Prompt, PromptError, clean_visitor_text, format_prompts, parse_prompts


def test_weighted_prompt_syntax():
    got = parse_prompts("Entrance to the Heaven realm:1.5 | Entrance to the Hell realm | smoke:-0.5")
    assert got == (Prompt("Entrance to the Heaven realm", 1.5), Prompt("Entrance to the Hell realm", 1.0),
                   Prompt("smoke", -0.5))
    assert parse_prompts(format_prompts(got)) == got
    # a colon that is not a weight stays in the text
    assert parse_prompts("time: 3 pm at the gate") == (Prompt("time: 3 pm at the gate", 1.0),)


@pytest.mark.parametrize("text,fragment", [
    ("", "empty"), ("   ", "empty"), ("a | | b", "part 2 of 3 is empty"), (":2", "part 1 of 1 is empty"),
    ("a:-1", "positive weight"), ("a|b|c|d|e|f", "too many"), ("x" * 201, "at most 200"),
    ("bad\x07bell", "control character"), ("a:1e999", "finite"), ("a:|b", "ends with ':' but no weight"),
    ("sea:1.2.3", "'1.2.3', which is not a finite number"), ("sea:nan", "not a finite number"),
])
def test_visitor_text_rejections_say_why(text, fragment):
    with pytest.raises(PromptError, match=fragment):
        clean_visitor_text(text)


def test_visitor_text_is_normalised():
    assert clean_visitor_text("  fire \n|  ice ") == "fire | ice"


def test_visitor_realms_use_the_exhibit_template():
    doors = load_exhibits(["doorways"])["doorways"]
    spec = spec_for(doors, random.Random(1), text="Fire | Ice")
    assert [p.text for p in spec.prompts] == ["Entrance to the Fire realm by James Gurney",
                                              "Entrance to the Ice realm by James Gurney"]
    full = spec_for(doors, random.Random(1), text="a small hut in a blizzard near the top of a mountain")
    assert full.prompts[0].text.startswith("a small hut")


def test_playlist_walks_every_pair_before_repeating():
    doors = load_exhibits(["doorways"])["doorways"]
    pl = Playlist({"doorways": doors}, seed=7)
    seen = [pl.next().prompt_text for _ in range(len(doors.all_sets()))]
    assert len(set(seen)) == len(doors.all_sets())
    again = Playlist({"doorways": doors}, seed=7)
    assert [again.next().prompt_text for _ in range(5)] == seen[:5]


def test_playlist_sigma_comes_from_the_range():
    ex = load_exhibits(["strange-attractions"])["strange-attractions"]
    pl = Playlist({ex.name: ex}, seed=3)
    sigmas = [pl.next().params["sigma"] for _ in range(50)]
    assert all(ex.sigma[0] <= s <= ex.sigma[1] for s in sigmas) and len(set(sigmas)) > 40
