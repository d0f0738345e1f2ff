"""Drawing helpers for the display: fonts, wrapped text, QR codes, piece cards and layout.

Everything here runs on the frame loop's thread but only on cached or small
inputs: a piece card is composed once when the piece arrives and then only
blitted; QR codes are cached per URL and size.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import pygame.freetype  # noqa: F401  (kerned text)

import pygame

from exhibits.store import Piece

WHITE = (240, 240, 235)
DIM = (165, 165, 160)
BLACK = (0, 0, 0)
ACCENT = (236, 180, 90)
PANEL = (0, 0, 0, 170)


# One family for every caption: DejaVu Sans (Debian's fonts-dejavu-core) covers Latin, Greek, Cyrillic,
# Hebrew, Arabic, Armenian, Georgian and the punctuation captions use (… · — “ ”). A text it cannot draw
# (Chinese, Japanese, Korean, Devanagari, ...) is drawn whole in a wide-coverage font instead, never one
# glyph in another font mid-line.
FAMILY = {
    False: ("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",),
    True: ("/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf", "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"),
}
WIDE_CANDIDATES = (
    "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/truetype/noto/NotoSans-Regular.ttf",
    "/usr/share/fonts/truetype/droid/DroidSansFallbackFull.ttf",
)
FONT_CANDIDATES = FAMILY[False] + WIDE_CANDIDATES  # (kept for callers that look for any usable font)

# Text sizes as fractions of the screen's short side. At 3 m a letter's capital should subtend at least
# 20 arc-minutes: 3000 mm x tan(20') = 17.5 mm. A 55-inch 16:9 screen is 685 mm tall, so 17.5 mm is 2.55% of
# its height; DejaVu Sans' capitals are 0.73 em, so the smallest text is 2.55 / 0.73 = 3.5% of the height
# (25 px at 720p, 38 px at 1080p).
MIN_TEXT = 0.036
TEXT = {"title": 0.060, "prompt": 0.047, "small": MIN_TEXT}


def find_font(bold: bool = False) -> str | None:
    """``KIOSK_FONT`` if set, else DejaVu Sans, else None (pygame's bundled font)."""
    import os

    wanted = os.environ.get("KIOSK_FONT")
    for path in ((wanted,) if wanted else ()) + FAMILY[bold]:
        if os.path.isfile(path):
            return path
    return None


def find_wide_font() -> str | None:
    import os

    return next((p for p in WIDE_CANDIDATES if os.path.isfile(p)), None)


class Face:
    """One font at one pixel size, kerned: ``size(text)``, ``render(text, color)``, ``covers(text)``."""

    def __init__(self, font: "pygame.freetype.Font", px: int, path: str | None):
        self.font, self.px, self.path = font, px, path

    def size(self, text: str) -> tuple[int, int]:
        r = self.font.get_rect(text, size=self.px) if text else None
        return (r.width if r else 0), self.height

    @property
    def height(self) -> int:
        return self.font.get_sized_height(self.px)

    def covers(self, text: str) -> bool:
        return all(m is not None for m in self.font.get_metrics(text, size=self.px)) if text else True

    def render(self, text: str, color: tuple[int, int, int]) -> pygame.Surface:
        if not text:
            return pygame.Surface((1, self.height), pygame.SRCALPHA)
        surf, _ = self.font.render(text, fgcolor=color, size=self.px)
        return surf


class Fonts:
    """The caption family (DejaVu Sans, regular and bold) at any size, kerned, with one font per text.

    Without DejaVu on the machine the captions use pygame's bundled font (it has the ellipsis too) and
    a warning says what to install."""

    _warned = False

    def __init__(self, path: str | None = None, bold_path: str | None = None, wide_path: str | None = None) -> None:
        import logging

        import pygame.freetype

        if not pygame.freetype.get_init():
            pygame.freetype.init()
        self.path = path if path is not None else find_font(False)
        self.bold_path = bold_path if bold_path is not None else (find_font(True) or self.path)
        self.wide_path = wide_path if wide_path is not None else find_wide_font()
        if self.path is None and not Fonts._warned:
            Fonts._warned = True
            logging.getLogger(__name__).warning(
                "DejaVu Sans not found (Debian: apt install fonts-dejavu-core); captions use pygame's bundled font")
        self._fonts: dict[str | None, pygame.freetype.Font] = {}
        self._faces: dict[tuple[str | None, int], Face] = {}

    def _font(self, path: str | None) -> "pygame.freetype.Font":
        import pygame.freetype

        f = self._fonts.get(path)
        if f is None:
            f = self._fonts[path] = pygame.freetype.Font(path)
            f.kerning = True  # "AV", "To", "At": pairs set as the type designer spaced them
            f.pad = True  # every line as tall as the font's ascent + descent: lines stack evenly
            f.antialiased = True
        return f

    def face(self, size: int, path: str | None) -> Face:
        px = max(8, int(size))
        key = (path, px)
        face = self._faces.get(key)
        if face is None:
            face = self._faces[key] = Face(self._font(path), px, path)
        return face

    def get(self, size: int, sample: str = "", bold: bool = False) -> Face:
        """The face that draws all of ``sample`` (the caption family unless it lacks a glyph ``sample`` needs)."""
        main = self.face(size, self.bold_path if bold else self.path)
        if not sample or main.covers(sample) or self.wide_path is None:
            return main
        wide = self.face(size, self.wide_path)
        return wide if wide.covers(sample) else main


def wrap(font: Face, text: str, width: int, max_lines: int) -> list[str]:
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


def _ellipsize(font: Face, text: str, width: int) -> str:
    """``text`` cut to ``width`` with an ellipsis, between words where a word fits (else mid-word)."""
    if font.size(text)[0] <= width:
        return text
    words = text.split()
    while len(words) > 1 and font.size(" ".join(words) + "…")[0] > width:
        words.pop()
    text = " ".join(words).rstrip(",;:-–— ")
    while text and font.size(text + "…")[0] > width:
        text = text[:-1]
    return text.rstrip(",;:-–— ") + "…"


def text(fonts: Fonts, s: str, size: int, color: tuple[int, int, int] = WHITE, bold: bool = False) -> pygame.Surface:
    return fonts.get(size, s, bold).render(s, color)


def paragraph(fonts: Fonts, s: str, size: int, width: int, max_lines: int, color: tuple[int, int, int] = WHITE,
              bold: bool = False) -> list[pygame.Surface]:
    """``s`` wrapped to ``width`` in ONE face (chosen for the whole text, ellipsis included)."""
    face = fonts.get(size, s + "…", bold)
    return [face.render(line, color) for line in wrap(face, s, width, max_lines)]


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
    side: bool  # caption and QR codes sit in a column beside the picture rather than over or under it
    caption: pygame.Rect
    qr: pygame.Rect  # the piece's download QR
    app_qr: pygame.Rect  # "send your own prompt"


def unit(screen: tuple[int, int]) -> int:
    """The length text sizes are fractions of: the screen's short side (its height in landscape)."""
    return min(screen)


def card_layout(screen: tuple[int, int], image: tuple[int, int], flip: bool = False) -> CardLayout:
    """Where picture, caption and QR codes go. Landscape with room beside the picture: the picture at one
    edge (``flip`` picks which: alternating pieces move the bright column, against burn-in) and a text column
    beside it. Otherwise (portrait, panoramas): the picture at the top, caption and QR codes below or, where
    there is no room, on a dark strip over its bottom."""
    W, H = screen
    w, h = image
    u = unit(screen)
    m = max(8, round(u * 0.035))
    q = round(u * 0.24)
    qa = round(u * 0.15)
    if W - w >= 0.42 * u:  # a column beside the picture
        img = pygame.Rect(W - w if flip else 0, (H - h) // 2, w, h)
        col = pygame.Rect(m if flip else w + m, m, W - w - 2 * m, H - 2 * m)
        qr = pygame.Rect(col.left, col.bottom - q - round(u * 0.06), q, q)
        app_qr = pygame.Rect(col.right - qa, col.bottom - qa - round(u * 0.1), qa, qa)
        if qr.right + m > app_qr.left:  # a narrow column: the piece's code alone
            app_qr = pygame.Rect(0, 0, 0, 0)
        caption = pygame.Rect(col.left, col.top, col.width, qr.top - col.top - m)
        return CardLayout(img, True, caption, qr, app_qr)
    img = pygame.Rect((W - w) // 2, 0 if H - h >= 0.3 * u else (H - h) // 2, w, h)
    below = H - img.bottom
    band = max(below, round(u * 0.3))
    top = H - band
    qr = pygame.Rect(W - m - q, H - m - q - round(u * 0.06), q, q)
    if band < q + round(u * 0.06) + 2 * m:
        q = max(32, band - round(u * 0.06) - 2 * m)
        qr = pygame.Rect(W - m - q, H - m - q - round(u * 0.06), q, q)
    caption = pygame.Rect(m, top + m, qr.left - 2 * m, band - 2 * m)
    return CardLayout(img, False, caption, qr, pygame.Rect(0, 0, 0, 0))


def caption_lines(piece: Piece) -> tuple[str, str, str, str]:
    """Series, prompt, sigma/seed and generator label as shown under a piece, each thing said once."""
    series = piece.series or piece.exhibit
    prompt = piece.prompt_text or piece.title
    numbers = f"seed {piece.seed}" if piece.sigma is None else f"sigma {float(piece.sigma):.2f} · seed {piece.seed}"
    label = piece.label or piece.generator
    series, prompt, numbers, label = said_once([series, prompt, numbers, label])
    return series, prompt, numbers, label


def said_once(lines: Sequence[str]) -> list[str]:
    """Later lines lose what earlier ones already said: a repeated hyphenated term ("weights-free"), a
    parenthesis whose words were all said ("(weights-free demo)"), or the whole line."""
    import re

    said: set[str] = set()
    out = []
    for line in lines:
        if said:
            line = re.sub(r"\s*\(([^()]*)\)", lambda mt: "" if _words(mt.group(1)) <= said else mt.group(0), line)
            line = re.sub(r"\b[\w]+(?:-[\w]+)+\b\s*",
                          lambda mt: "" if mt.group(0).strip().lower() in said else mt.group(0), line)
            line = line.strip(" ,;:-·")
            if line and _words(line) <= said:
                line = ""
        out.append(line)
        said |= _words(line) | {t.lower() for t in re.findall(r"[\w]+(?:-[\w]+)+", line)}
    return out


def _words(s: str) -> set[str]:
    import re

    return {w.lower() for w in re.findall(r"[\w]+(?:-[\w]+)*", s)} | \
        {w.lower() for w in re.findall(r"[\w]+", s)}


def caption_block(fonts: Fonts, piece: Piece, width: int, u: int) -> list[pygame.Surface]:
    """The caption's rendered lines: series (bold), prompt, numbers, label; sizes from ``TEXT`` times ``u``."""
    series, prompt, numbers, label = caption_lines(piece)
    big, mid, small = (round(u * TEXT[k]) for k in ("title", "prompt", "small"))
    lines = paragraph(fonts, series, big, width, 2, bold=True)
    lines += paragraph(fonts, prompt, mid, width, 5) if prompt else []
    lines += paragraph(fonts, numbers, small, width, 2, DIM) if numbers else []
    lines += paragraph(fonts, label, small, width, 3, ACCENT) if label else []
    return lines


def build_card(fonts: Fonts, qrs: QRCache, screen: tuple[int, int], image: pygame.Surface, piece: Piece,
               url: str, app_url: str = "", flip: bool = False) -> tuple[pygame.Surface, pygame.Surface]:
    """Compose one full-screen card: the fitted image on black, the caption and the QR codes.

    Returns ``(base, card)``: the picture alone, and the picture with caption and QR. Crossfades go
    through ``base`` so two captions or two QR codes are never on screen at once.
    """
    W, H = screen
    u = unit(screen)
    card = pygame.Surface(screen).convert()
    card.fill(BLACK)
    lay = card_layout(screen, image.get_size(), flip)
    card.blit(image, lay.image)
    base = card.copy()
    cap = lay.caption
    lines = caption_block(fonts, piece, cap.width, u)
    gap = max(2, round(u * 0.008))
    para = max(gap, round(u * 0.02))
    small = round(u * TEXT["small"])
    if not lay.side:
        strip_top = min(cap.top - para, lay.image.bottom)
        card.blit(panel((W, H - strip_top)), (0, strip_top))
    y = cap.top
    for s in lines:
        if y + s.get_height() > cap.bottom:
            break
        card.blit(s, (cap.left, y))
        y += s.get_height() + gap
    qr = qrs.get(url, lay.qr.width)
    card.blit(qr, (lay.qr.left, lay.qr.top))
    hint = text(fonts, "scan to download", small, WHITE)
    m = max(8, round(u * 0.035))
    card.blit(hint, (min(lay.qr.left, W - m - hint.get_width()), lay.qr.top + qr.get_height() + gap))
    if lay.app_qr.width and app_url:
        aq = qrs.get(app_url, lay.app_qr.width)
        card.blit(aq, (lay.app_qr.right - aq.get_width(), lay.app_qr.top))
        room = min(lay.app_qr.right - lay.qr.right - 2 * gap, round(u * 0.26))  # clear of "scan to download"
        for i, s in enumerate(paragraph(fonts, "send your own prompt", small, room, 2, DIM)):
            card.blit(s, (lay.app_qr.right - s.get_width(), lay.app_qr.top + aq.get_height() + gap
                          + i * (s.get_height() + gap)))
    return base, card
