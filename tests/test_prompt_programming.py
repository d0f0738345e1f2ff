"""Prompt programming: exhibit-level style modifiers and prompt lists for series."""
from __future__ import annotations

import random
from collections import Counter

import pytest

from exhibits.config import ConfigError, load_exhibit
from exhibits.playlist import Playlist, spec_for
from exhibits.prompts import Prompt

TOML = """title = "Lights"
[generator]
name = "pixels"
[prompts]
series = ["a lighthouse in a storm", "a cathedral of glass | fog:-0.5", "a small hut in a blizzard"]
modifiers = ["rendered in unreal engine", "trending on artstation"]
{extra}
"""


def _exhibit(tmp_path, extra=""):
    path = tmp_path / "lights.toml"
    path.write_text(TOML.format(extra=extra))
    return load_exhibit(path)


def test_playlist_walks_the_series_and_the_modifiers(tmp_path):
    ex = _exhibit(tmp_path)
    pl = Playlist({"lights": ex}, seed=3)
    specs = [pl.next() for _ in range(6)]
    bases = Counter(s.prompts[0].text.split(", ")[0] for s in specs)
    assert bases == {"a lighthouse in a storm": 2, "a cathedral of glass": 2, "a small hut in a blizzard": 2}
    mods = Counter(s.prompts[0].text.split(", ", 1)[1] for s in specs)
    assert mods == {"rendered in unreal engine": 3, "trending on artstation": 3}
    glass = next(s for s in specs if s.prompts[0].text.startswith("a cathedral"))
    assert glass.prompts[1] == Prompt("fog", -0.5)  # negative prompts keep their words
    assert glass.prompt_text == " | ".join(str(p) for p in glass.prompts)


def test_all_mode_puts_every_modifier_on_every_piece_including_visitors(tmp_path):
    ex = _exhibit(tmp_path, 'modifier_mode = "all"')
    spec = spec_for(ex, random.Random(0), text="a red door")
    assert spec.prompts == (Prompt("a red door, rendered in unreal engine, trending on artstation", 1.0),)
    assert Playlist({"lights": ex}, seed=1).next().prompts[0].text.endswith("unreal engine, trending on artstation")


@pytest.mark.parametrize("extra,key", [('modifier_mode = "some"', "prompts.modifier_mode")])
def test_bad_prompt_programming_is_named(tmp_path, extra, key):
    with pytest.raises(ConfigError, match=key):
        _exhibit(tmp_path, extra)


def test_bad_series_or_modifier_entries_are_named(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('title = "x"\n[generator]\nname = "pixels"\n[prompts]\nseries = ["ok", "a:nan"]\n')
    with pytest.raises(ConfigError, match=r"prompts.series\[1\]"):
        load_exhibit(path)
    path.write_text('title = "x"\n[generator]\nname = "pixels"\n[prompts]\nmodifiers = ["a | b"]\n')
    with pytest.raises(ConfigError, match=r"prompts.modifiers\[0\].*without '\|'"):
        load_exhibit(path)
