"""The prompt-suffix experiment: the same seeds with and without style modifiers, side by side on one sheet.

``python -m kiosk suffix-sheet pixels-tiny --prompt "a lighthouse in a storm" --modifier "rendered in unreal engine"
--modifier "trending on artstation" --seeds 3 --out sheet.png``

Rows are seeds, columns are the plain prompt then the prompt with each modifier
(appended to the positive prompts, as an exhibit's ``[prompts] modifiers`` are).
Every cell is rendered in this process by the exhibit's own generator and settings;
the sheet is written atomically with the experiment in its PNG metadata.
"""
from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any, Callable, Sequence

from exhibits.config import Exhibit
from exhibits.files import write_png
from exhibits.prompts import Prompt, format_prompts, parse_prompts
from kiosk.contact_sheet import BACKGROUND, MUTED, PAD, TEXT, _font, _font_px, fit_into

log = logging.getLogger(__name__)


def suffix_grid(exhibit: Exhibit, prompt: str, modifiers: Sequence[str], seeds: Sequence[int], *,
                device: Any = None, weights_dir: Path | None = None, size: int | None = None,
                progress: Callable[[str], None] = lambda msg: None) -> list[list[Any]]:
    """Render ``[[image per column] per seed]``: column 0 without a modifier, then one per modifier."""
    import torch

    from renderer.base import RenderContext, RenderRequest, build
    from renderer.device import autocast_dtype, choose_device

    if not modifiers:
        raise ValueError("the experiment needs at least one --modifier to compare against the plain prompt")
    if not seeds:
        raise ValueError("the experiment needs at least one seed")
    base = parse_prompts(prompt)
    columns: list[tuple[Prompt, ...]] = [base, *(exhibit.with_modifier(base, m) for m in modifiers)]
    dev = choose_device(device or "auto")
    width, height = (size, size) if size else (exhibit.width, exhibit.height)
    rows = []
    with tempfile.TemporaryDirectory(prefix="suffix-sheet-") as tmp:
        ctx = RenderContext(device=dev, dtype=autocast_dtype(dev) if dev.type == "cuda" else torch.float32,
                            weights_dir=Path(weights_dir or Path(tmp) / "weights"), work_dir=Path(tmp) / "setup")
        gen = build(exhibit.generator, exhibit.settings_dict(), ctx)
        for seed in seeds:
            row = []
            for c, prompts in enumerate(columns):
                work = Path(tmp) / f"s{seed}-c{c}"
                job_ctx = RenderContext(device=dev, dtype=ctx.dtype, weights_dir=ctx.weights_dir, work_dir=work)
                req = RenderRequest(job_id=0, exhibit=exhibit.name, generator=exhibit.generator,
                                    prompts=tuple((p.text, p.weight) for p in prompts), seed=int(seed),
                                    width=width, height=height, params=exhibit.settings_dict())
                progress(f"seed {seed}: {format_prompts(prompts)}")
                row.append(gen.render(req, job_ctx).image)
            rows.append(row)
    return rows


def suffix_sheet(rows: Sequence[Sequence[Any]], modifiers: Sequence[str], seeds: Sequence[int], prompt: str,
                 out_path: str | Path, *, thumb: int = 256, label: str = "") -> Path:
    """Lay the grid out: a header row naming each column, a seed label per row; written atomically."""
    from PIL import Image, ImageDraw

    px = _font_px(thumb)
    font, small = _font(px), _font(max(9, px - 2))
    cols = 1 + len(modifiers)
    head = 3 * px + 3 * PAD + (px + 4 if label else 0)
    left = 4 * px + PAD
    w = left + cols * (thumb + PAD) + PAD
    h = head + len(rows) * (thumb + PAD) + PAD
    sheet = Image.new("RGB", (w, h), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    draw.text((PAD, PAD // 2), f"\u201c{prompt}\u201d with and without style modifiers", fill=TEXT,
              font=_font(round(px * 1.3)))
    if label:
        draw.text((PAD, PAD // 2 + round(px * 1.6)), label, fill=MUTED, font=small)
    names = ["(no modifier)", *(f"+ {m}" for m in modifiers)]
    for c, name in enumerate(names):
        x = left + c * (thumb + PAD)
        draw.text((x, head - px - PAD // 2), _clip(name, thumb, px), fill=TEXT if c else MUTED, font=small)
    for r, (seed, row) in enumerate(zip(seeds, rows)):
        y = head + r * (thumb + PAD)
        draw.text((PAD, y + thumb // 2 - px // 2), f"seed\n{seed}", fill=MUTED, font=small)
        for c, im in enumerate(row):
            cell = fit_into(im, thumb)
            x = left + c * (thumb + PAD)
            sheet.paste(cell, (x + (thumb - cell.width) // 2, y + (thumb - cell.height) // 2))
    out = Path(out_path)
    write_png(out, sheet, {"experiment": "prompt suffix", "prompt": prompt, "modifiers": list(modifiers),
                           "seeds": list(seeds), "label": label})
    return out


def _clip(text: str, width_px: int, font_px: int) -> str:
    limit = max(8, int(width_px / (0.55 * font_px)))
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"
