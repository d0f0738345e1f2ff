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


def clean_visitor_text(text: object, *, max_chars: int = MAX_VISITOR_CHARS) -> str:
    """Normalise a visitor's prompt and reject what the show cannot take, with a reason a phone can show."""
    if text is None:
        raise PromptError("the prompt is empty: write a few words")
    if not isinstance(text, str):
        raise PromptError("the prompt must be text")
    text = unicodedata.normalize("NFC", text)
    bad = [c for c in text if unicodedata.category(c) in ("Cc", "Cf", "Cs", "Co") and c not in "\t\n\r "]
    if bad:
        raise PromptError(f"the prompt contains a control character (U+{ord(bad[0]):04X})")
    text = " ".join(text.split())
    if not text:
        raise PromptError("the prompt is empty: write a few words")
    if len(text) > max_chars:
        raise PromptError(f"the prompt is {len(text)} characters long; at most {max_chars} fit")
    parse_prompts(text)  # raises with the part that is wrong
    return text
