"""Prompt syntax of the VQGAN+CLIP era, kept: ``text:weight`` parts joined by ``|``.

``"Entrance to the Heaven realm:1 | Entrance to the Hell realm:1"`` gives two
weighted prompts; a missing weight is 1.0; negative weights push away.
"""
from __future__ import annotations

import math
import re
import unicodedata
from typing import NamedTuple

MAX_VISITOR_CHARS = 200
MAX_PARTS = 5

_WEIGHT_RE = re.compile(r"^(?P<text>.*?):\s*(?P<weight>[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*$", re.S)
# After the last colon: something that was meant as a weight but is not one ("1.2.3", "nan", "-inf").
_BROKEN_WEIGHT_RE = re.compile(r"^[-+]?(?:[\d.]+(?:[eE][-+]?[\d.]*)?|nan|inf|infinity)$", re.I)


class PromptError(ValueError):
    """A prompt that cannot be used; the message says which part and why."""


class Prompt(NamedTuple):
    text: str
    weight: float = 1.0

    def __str__(self) -> str:
        return self.text if self.weight == 1.0 else f"{self.text}:{self.weight:g}"


def parse_prompts(text: str, *, max_parts: int = MAX_PARTS) -> tuple[Prompt, ...]:
    """Parse ``a:w | b:w``. Raises :class:`PromptError` naming the part that is wrong."""
    if not isinstance(text, str):
        raise PromptError(f"prompt must be text, got {type(text).__name__}")
    parts = text.split("|")
    if len(parts) > max_parts:
        raise PromptError(f"too many prompts: {len(parts)} parts separated by '|', at most {max_parts}")
    prompts = []
    for i, raw in enumerate(parts, 1):
        m = _WEIGHT_RE.match(raw)
        body, weight = (m.group("text"), float(m.group("weight"))) if m else (raw, 1.0)
        where = f"prompt part {i} of {len(parts)} ({raw.strip()[:30]!r})"
        if not m and ":" in raw:
            tail = raw.rsplit(":", 1)[1].strip()
            if not tail and raw.strip() != ":":
                raise PromptError(f"{where} ends with ':' but no weight: write a number after it, like 'sea:0.5'")
            if _BROKEN_WEIGHT_RE.match(tail):
                raise PromptError(f"{where} has the weight {tail[:20]!r}, which is not a finite number")
        body = " ".join(body.split())
        if not body:
            raise PromptError(f"prompt part {i} of {len(parts)} is empty")
        if not math.isfinite(weight):
            raise PromptError(f"prompt part {i} ({body!r}) has a weight that is not a finite number")
        prompts.append(Prompt(body, weight))
    if all(p.weight <= 0 for p in prompts):
        raise PromptError("at least one prompt needs a positive weight")
    return tuple(prompts)


def format_prompts(prompts: tuple[Prompt, ...] | list) -> str:
    return " | ".join(str(Prompt(*p)) for p in prompts)


# Invisible characters people really write: the joiners of emoji sequences and of Persian, Indic and Arabic
# words, the left-to-right / right-to-left marks, and the tag characters of flag sequences.
_ALLOWED_FORMAT = {0x200C, 0x200D, 0x200E, 0x200F, 0x061C} | set(range(0xE0020, 0xE0080))
# Characters that reorder the text around them (Trojan-Source style): refused.
_BIDI_CONTROLS = {0x202A, 0x202B, 0x202C, 0x202D, 0x202E, 0x2066, 0x2067, 0x2068, 0x2069}


def _char_problem(c: str) -> str | None:
    """Why ``c`` cannot be in a visitor's prompt, or None."""
    cp = ord(c)
    cat = unicodedata.category(c)
    if cp in _BIDI_CONTROLS:
        return "a bidirectional override character"
    if cat == "Cc":
        return None if c in "\t\n\r" else "a control character"
    if cat == "Cs":
        return "a lone surrogate"
    if cat == "Co":
        return "a private-use character"
    if cat == "Cf" and cp not in _ALLOWED_FORMAT:
        return "an invisible formatting character"
    if (0xFDD0 <= cp <= 0xFDEF) or (cp & 0xFFFE) == 0xFFFE:
        return "a noncharacter"
    return None


def char_label(c: str) -> str:
    """``U+202E RIGHT-TO-LEFT OVERRIDE``: the code point and its Unicode name (where it has one)."""
    name = unicodedata.name(c, "")
    return f"U+{ord(c):04X} {name}" if name else f"U+{ord(c):04X}"


def visitor_text_length(text: str) -> int:
    """How long a visitor's prompt is, as the phone's counter shows it: code points after NFC and whitespace folding."""
    return len(" ".join(unicodedata.normalize("NFC", text).split()))


def clean_visitor_text(text: object, *, max_chars: int = MAX_VISITOR_CHARS, what: str = "the prompt") -> str:
    """Normalise a visitor's prompt and reject what the show cannot take, with a reason a phone can show.

    Every script, combining marks, emoji with their joiners (ZWJ) and the Persian non-joiner (ZWNJ) are
    welcome. Control, surrogate, private-use, bidirectional-override and other invisible formatting
    characters are refused with the character and its position (counting characters from 1).
    Length counts code points after NFC normalisation and whitespace folding (the phone counts the same).
    """
    if text is None:
        raise PromptError(f"{what} is empty: write a few words")
    if not isinstance(text, str):
        raise PromptError(f"{what} must be text")
    for i, c in enumerate(text, 1):
        problem = _char_problem(c)
        if problem:
            raise PromptError(f"{what} contains {problem} ({char_label(c)}) at position {i}: remove it and try again")
    text = " ".join(unicodedata.normalize("NFC", text).split())
    if not text:
        raise PromptError(f"{what} is empty: write a few words")
    if len(text) > max_chars:
        raise PromptError(f"{what} is {len(text)} characters long; at most {max_chars} fit")
    parse_prompts(text)  # raises with the part that is wrong
    return text
