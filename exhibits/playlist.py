"""The playlist: draws the next piece from the exhibits so the queue never runs dry.

Exhibits are chosen by weight; an exhibit with realm sets walks through every
set in a shuffled order before repeating one; sigma is drawn from the
exhibit's range. Deterministic from its seed, so a show can be replayed.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, Mapping

from exhibits.config import Exhibit
from exhibits.prompts import Prompt, format_prompts, parse_prompts


@dataclass(frozen=True)
class JobSpec:
    exhibit: str
    prompts: tuple[Prompt, ...]
    prompt_text: str
    seed: int
    params: Mapping[str, Any] = field(default_factory=dict)


def spec_for(exhibit: Exhibit, rng: random.Random, *, realms: tuple[str, ...] | None = None,
             text: str | None = None, seed: int | None = None, series: tuple[Prompt, ...] | None = None,
             modifier: str | None = None) -> JobSpec:
    """One job for ``exhibit``: from a realm set, a visitor's text, a series entry or the exhibit's own prompts.

    ``modifier`` (one of the exhibit's style modifiers) is appended to the positive prompts.
    """
    spec = _spec_for(exhibit, rng, realms=realms, text=text, seed=seed, series=series)
    if modifier is None and exhibit.modifier_mode == "all" and exhibit.modifiers:
        modifier = ", ".join(exhibit.modifiers)
    if not modifier or not spec.prompts:
        return spec
    prompts = exhibit.with_modifier(spec.prompts, modifier)
    text_out = format_prompts(prompts) if text is None and realms is None else f"{spec.prompt_text} ({modifier})"
    return JobSpec(spec.exhibit, prompts, text_out, spec.seed, spec.params)


def _spec_for(exhibit: Exhibit, rng: random.Random, *, realms: tuple[str, ...] | None = None,
              text: str | None = None, seed: int | None = None, series: tuple[Prompt, ...] | None = None) -> JobSpec:
    seed = rng.randrange(2**31) if seed is None else seed
    params: dict[str, Any] = {}
    if exhibit.sigma is not None:
        lo, hi = exhibit.sigma
        params["sigma"] = round(rng.uniform(lo, hi), 4)
    if text is not None:
        prompts = parse_prompts(text)
        if exhibit.template and all("{" not in p.text for p in prompts) and _looks_like_realms(prompts):
            prompts = tuple(Prompt(exhibit.realm_prompt(p.text), p.weight) for p in prompts)
        return JobSpec(exhibit.name, prompts, text, seed, params)
    if realms is not None:
        prompts = exhibit.prompts_for(realms)
        return JobSpec(exhibit.name, prompts, " / ".join(realms), seed, params)
    if series is not None:
        return JobSpec(exhibit.name, tuple(series), format_prompts(series), seed, params)
    if exhibit.fixed_prompts:
        return JobSpec(exhibit.name, exhibit.fixed_prompts, format_prompts(exhibit.fixed_prompts), seed, params)
    return JobSpec(exhibit.name, (), exhibit.title, seed, params)


def _looks_like_realms(prompts: tuple[Prompt, ...]) -> bool:
    # "Fire | Ice" names realms; "a small hut in a blizzard" is a full prompt.
    return all(len(p.text.split()) <= 4 for p in prompts)


class Playlist:
    def __init__(self, exhibits: Mapping[str, Exhibit], seed: int | None = None):
        if not exhibits:
            raise ValueError("the playlist needs at least one exhibit")
        self.exhibits = dict(exhibits)
        self.rng = random.Random(seed)
        self._decks: dict[str, list[tuple[str, ...]]] = {}

    def _next_realms(self, ex: Exhibit) -> tuple[str, ...] | None:
        sets = [s for _, s in ex.all_sets()]
        if not sets:
            return None
        deck = self._decks.get(ex.name)
        if not deck:
            deck = list(sets)
            self.rng.shuffle(deck)
            self._decks[ex.name] = deck
        return deck.pop()

    def choose_exhibit(self, only: list[str] | None = None) -> Exhibit:
        names = [n for n in self.exhibits if only is None or n in only]
        if not names:
            raise ValueError("no exhibit is available to the playlist")
        weights = [self.exhibits[n].weight for n in names]
        if sum(weights) <= 0:
            weights = [1.0] * len(names)
        return self.exhibits[self.rng.choices(names, weights=weights)[0]]

    def _next_from(self, key: str, items: tuple) -> Any:
        """Walk ``items`` in a shuffled order before repeating one (like realm sets)."""
        if not items:
            return None
        deck = self._decks.get(key)
        if not deck:
            deck = list(items)
            self.rng.shuffle(deck)
            self._decks[key] = deck
        return deck.pop()

    def next(self, only: list[str] | None = None) -> JobSpec:
        ex = self.choose_exhibit(only)
        realms = self._next_realms(ex)
        series = self._next_from(f"{ex.name}/series", ex.series_prompts) if realms is None else None
        modifier = self._next_from(f"{ex.name}/modifiers", ex.modifiers) if ex.modifier_mode == "each" else None
        return spec_for(ex, self.rng, realms=realms, series=series, modifier=modifier)
