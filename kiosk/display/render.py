"""Drawing helpers for the display: fonts, wrapped text, QR codes, piece cards and layout.

Everything here runs on the frame loop's thread but only on cached or small
inputs: a piece card is composed once when the piece arrives and then only
blitted; QR codes are cached per URL and size.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import pygame

from exhibits.store import Piece

WHITE = (240, 240, 235)
DIM = (165, 165, 160)
BLACK = (0, 0, 0)
ACCENT = (236, 180, 90)
PANEL = (0, 0, 0, 170)


# Wide-coverage fonts for text beyond pygame's bundled font (Noto CJK first: it also covers
# Chinese, Japanese and Korean).
FONT_CANDIDATES = (
    "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/truetype/noto/NotoSans-Regular.ttf",
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
)


def find_font() -> str | None:
    """``KIOSK_FONT`` if set, else the first wide-coverage system font found, else None (pygame's own)."""
    import os

    wanted = os.environ.get("KIOSK_FONT")
    for path in ((wanted,) if wanted else ()) + FONT_CANDIDATES:
        if os.path.isfile(path):
            return path
    return None


BUNDLED_END = 0x0530  # pygame's bundled font draws Latin, Greek and Cyrillic; beyond that it draws boxes


class Fonts:
    """pygame's bundled font at a few sizes, and for text it cannot draw (Hebrew, Arabic, Devanagari, ...; CJK with
    Debian's fonts-noto-cjk installed) a wide-coverage system font, so a visitor's prompt does not turn into boxes."""

    def __init__(self, wide_path: str | None = None) -> None:
        self.wide_path = wide_path if wide_path is not None else find_font()
        self._cache: dict[tuple[int, bool], pygame.font.Font] = {}

    def get(self, size: int, sample: str = "") -> pygame.font.Font:
        """The font for ``sample`` at ``size``: the bundled one unless ``sample`` needs more glyphs."""
        size = max(8, int(size))
        wide = bool(self.wide_path) and any(ord(c) >= BUNDLED_END for c in sample)
        font = self._cache.get((size, wide))
        if font is None:
            # A TTF at the same nominal size draws larger than pygame's bundled font; scale it to match.
            font = self._cache[(size, wide)] = pygame.font.Font(self.wide_path if wide else None,
                                                                int(size * 0.74) if wide else size)
        return font


def wrap(font: pygame.font.Font, text: str, width: int, max_lines: int) -> list[str]:
    """Greedy word wrap to ``width`` pixels; the last line ends in an ellipsis when text is left over."""
    words = text.split()
    lines: list[str] = []
    line = ""
    for i, word in enumerate(words):
        trial = f"{line} {word}".strip()
        if font.size(trial)[0] <= width or not line:
            line = trial
            continue
        lines.append(line)
        line = word
        if len(lines) == max_lines:
            lines[-1] = _ellipsize(font, lines[-1] + " " + " ".join(words[i:]), width)
            return lines
    if line:
        lines.append(_ellipsize(font, line, width))
    return lines[:max_lines]


def _ellipsize(font: pygame.font.Font, text: str, width: int) -> str:
    if font.size(text)[0] <= width:
        return text
    while text and font.size(text + "…")[0] > width:
        text = text[:-1]
    return text.rstrip() + "…"


def text(fonts: Fonts, s: str, size: int, color: tuple[int, int, int] = WHITE) -> pygame.Surface:
    return fonts.get(size, s).render(s, True, color)


def blit_lines(dest: pygame.Surface, surfaces: Sequence[pygame.Surface], x: int, y: int, gap: int,
               center: bool = False) -> int:
    """Blit surfaces one below the other; returns the y below the last one."""
    for s in surfaces:
        dx = x - s.get_width() // 2 if center else x
        dest.blit(s, (dx, y))
        y += s.get_height() + gap
    return y


class QRCache:
    """QR codes rendered with segno into converted pygame surfaces, cached per (URL, size)."""

    def __init__(self) -> None:
        self._cache: dict[tuple[str, int], pygame.Surface] = {}

    def get(self, url: str, size: int) -> pygame.Surface:
        key = (url, int(size))
        surf = self._cache.get(key)
        if surf is None:
            surf = self._cache[key] = qr_surface(url, size)
        return surf


def qr_surface(url: str, size: int, border: int = 4) -> pygame.Surface:
    """A black-on-white QR code of at most ``size`` pixels, with whole pixels per module and a quiet zone."""
    import segno

    code = segno.make(url, error="m", micro=False)
    rows = [bytes(r) for r in code.matrix_iter(scale=1, border=border)]
    n = len(rows)
    raw = b"".join(bytes(0 if v else 255 for v in row for _ in range(3)) for row in rows)
    small = pygame.image.frombuffer(raw, (n, n), "RGB")
    px = max(1, int(size) // n)
    return pygame.transform.scale(small, (n * px, n * px)).convert()


def panel(size: tuple[int, int], rgba: tuple[int, int, int, int] = PANEL, radius: int = 0) -> pygame.Surface:
    surf = pygame.Surface(size, pygame.SRCALPHA)
    pygame.draw.rect(surf, rgba, surf.get_rect(), border_radius=radius)
    return surf


def progress_bar(dest: pygame.Surface, rect: pygame.Rect, fraction: float) -> None:
    fraction = min(1.0, max(0.0, fraction))
    pygame.draw.rect(dest, (60, 60, 58), rect, border_radius=rect.height // 2)
    if fraction > 0:
        fill = rect.copy()
        fill.width = max(rect.height, round(rect.width * fraction))
        pygame.draw.rect(dest, ACCENT, fill, border_radius=rect.height // 2)


# -- piece cards ------------------------------------------------------------------------------

@dataclass(frozen=True)
class CardLayout:
    image: pygame.Rect
    side: bool  # caption and QR sit in the letterbox bars rather than over the image
    caption: pygame.Rect
    qr: pygame.Rect


def card_layout(screen: tuple[int, int], image: tuple[int, int]) -> CardLayout:
    W, H = screen
    w, h = image
    m = max(8, round(H * 0.03))
    img = pygame.Rect((W - w) // 2, (H - h) // 2, w, h)
    bar = img.left
    if bar >= 0.17 * W:
        q = min(bar - 2 * m, round(H * 0.34))
        qr = pygame.Rect(img.right + (bar - q) // 2, H - m - q - round(H * 0.06), q, q)
        caption = pygame.Rect(m, round(H * 0.3), bar - 2 * m, H - round(H * 0.3) - m)
        return CardLayout(img, True, caption, qr)
    q = round(H * 0.22)
    qr = pygame.Rect(W - m - q, H - m - q - round(H * 0.05), q, q)
    caption = pygame.Rect(m, round(H * 0.72), qr.left - 3 * m, round(H * 0.28) - m)
    return CardLayout(img, False, caption, qr)


def caption_lines(piece: Piece) -> tuple[str, str, str, str]:
    """Series, prompt, sigma/seed and generator label as shown under a piece."""
    series = piece.series or piece.exhibit
    prompt = piece.prompt_text or piece.title
    numbers = f"seed {piece.seed}" if piece.sigma is None else f"sigma {float(piece.sigma):.2f} · seed {piece.seed}"
    label = piece.label or piece.generator
    return series, prompt, numbers, label


def build_card(fonts: Fonts, qrs: QRCache, screen: tuple[int, int], image: pygame.Surface, piece: Piece,
               url: str) -> tuple[pygame.Surface, pygame.Surface]:
    """Compose one full-screen card: the fitted image on black, the caption and the piece's QR.

    Returns ``(base, card)``: the picture alone, and the picture with caption and QR. Crossfades go
    through ``base`` so two captions or two QR codes are never on screen at once.
    """
    W, H = screen
    card = pygame.Surface(screen).convert()
    card.fill(BLACK)
    lay = card_layout(screen, image.get_size())
    card.blit(image, lay.image)
    base = card.copy()
    series, prompt, numbers, label = caption_lines(piece)
    cap = lay.caption
    big, mid, small = round(H * 0.05), round(H * 0.04), round(H * 0.032)
    lines = [text(fonts, s, big) for s in wrap(fonts.get(big, series), series, cap.width, 2)]
    lines += [text(fonts, s, mid) for s in wrap(fonts.get(mid, prompt), prompt, cap.width, 4)] if prompt != series else []
    lines += [text(fonts, s, small, DIM) for s in wrap(fonts.get(small, numbers), numbers, cap.width, 2)]
    lines += [text(fonts, s, small, ACCENT) for s in wrap(fonts.get(small, label), label, cap.width, 3)]
    gap = max(2, H // 150)
    height = sum(s.get_height() + gap for s in lines)
    y = cap.bottom - height
    if not lay.side:
        strip = panel((W, H - cap.top + gap * 4))
        card.blit(strip, (0, cap.top - gap * 4))
    blit_lines(card, lines, cap.left, max(cap.top, y), gap)
    qr = qrs.get(url, lay.qr.width)
    qx = lay.qr.centerx - qr.get_width() // 2
    card.blit(qr, (qx, lay.qr.top))
    hint = text(fonts, "scan to download", small, WHITE)
    card.blit(hint, (lay.qr.centerx - hint.get_width() // 2, lay.qr.top + qr.get_height() + gap * 2))
    return base, card
