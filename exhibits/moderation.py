"""Moderation before the screen: which visitors' prompts a person should look at first.

A prompt that matches the word list (with leetspeak, spacing and repeated letters
undone) or the show's own ``blocked_words`` is *held* for the staff, never refused
and never dropped: the visitor is told it waits for a person, and the staff
approve or cancel it on the queue page.

The built-in list is deliberately short (slurs and sexual or violent words that
have no place on a public screen); a show adds its own words in ``kiosk.toml``.
"""
from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import Iterable

# Kept short and obvious; a venue extends it with `blocked_words` in kiosk.toml.
DEFAULT_WORDS = (
    "fuck", "shit", "cunt", "bitch", "whore", "slut", "rape", "rapist", "nazi", "hitler", "porn", "nude", "naked",
    "cock", "dick", "pussy", "penis", "vagina", "nigger", "nigga", "faggot", "fag", "retard", "kike", "spic",
    "chink", "tranny", "genocide", "suicide", "behead", "gore", "swastika", "isis", "kkk",
)

# What leetspeak writers substitute for letters.
_LEET = str.maketrans({"0": "o", "1": "i", "!": "i", "|": "i", "3": "e", "4": "a", "@": "a", "5": "s", "$": "s",
                       "7": "t", "+": "t", "8": "b", "9": "g", "6": "g", "2": "z", "€": "e", "¢": "c"})
_SEPARATORS = re.compile(r"[\s._\-*~'`^,:;/\\]+")


@dataclass(frozen=True)
class Verdict:
    held: bool
    reason: str = ""  # for the staff: which word matched, in which form


def _fold(text: str) -> str:
    """Lower case, accents off (é -> e), compatibility forms folded (ｆ -> f)."""
    text = unicodedata.normalize("NFKD", text.casefold())
    return "".join(c for c in text if not unicodedata.combining(c))


def _squeeze(word: str) -> str:
    """``fuuuuck`` -> ``fuck``: runs of one letter become one (unless that leaves under three letters)."""
    short = re.sub(r"(.)\1+", r"\1", word)
    return short if len(short) >= 3 else word


def _variants(text: str) -> set[str]:
    """The words of ``text`` as written, de-leeted, squeezed, and with spaced-out letters joined (``f u c k``)."""
    folded = _fold(text)
    out: set[str] = set()
    for form in (folded, folded.translate(_LEET)):
        words = [w for w in re.split(r"[^\w]+", form) if w]
        out.update(words)
        out.update(_squeeze(w) for w in words)
        # letters spaced or dotted apart: "f.u.c.k", "s h i t"
        singles = [t for t in _SEPARATORS.split(form) if t]
        run: list[str] = []
        for tok in singles + [""]:
            if len(tok) == 1 and tok.isalnum():
                run.append(tok)
                continue
            if len(run) >= 3:
                joined = "".join(run)
                out.update((joined, _squeeze(joined)))
            run = []
    return out


class Moderator:
    """Checks visitors' prompts against the built-in list plus the show's own ``blocked_words``."""

    def __init__(self, extra: Iterable[str] = (), *, use_defaults: bool = True):
        words = [(w, "the word list") for w in (DEFAULT_WORDS if use_defaults else ())]
        words += [(w, "the show's block list") for w in extra if w and w.strip()]
        self.single: dict[str, str] = {}
        self.phrases: list[tuple[tuple[str, ...], str]] = []
        for w, source in words:
            parts = tuple(_squeeze(p) for p in re.split(r"[^\w]+", _fold(w)) if p)
            if len(parts) == 1:
                self.single.update({parts[0]: source, _fold(w).strip(): source})
            elif parts:
                self.phrases.append((parts, source))

    def check(self, text: str) -> Verdict:
        variants = _variants(text)
        for word in sorted(self.single):
            if word in variants:
                return Verdict(True, f"matched {self.single[word]}: {word!r}")
        # masked letters: "f*ck", "sh#t"
        for masked in re.findall(r"\w*[*#]+\w*", _fold(text).translate(_LEET)):
            if not masked.strip("*#"):
                continue
            pattern = re.compile("".join("\\w?" if ch in "*#" else re.escape(ch) for ch in masked))
            hit = next((w for w in sorted(self.single) if len(w) >= 3 and pattern.fullmatch(w)), None)
            if hit:
                return Verdict(True, f"matched {self.single[hit]}: {hit!r} (written {masked!r})")
        if self.phrases:
            squeezed = " ".join(_squeeze(w) for w in re.split(r"[^\w]+", _fold(text).translate(_LEET)) if w)
            for phrase, source in self.phrases:
                if f" {' '.join(phrase)} " in f" {squeezed} ":
                    return Verdict(True, f"matched {source}: {' '.join(phrase)!r}")
        return Verdict(False)
