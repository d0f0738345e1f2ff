"""``python -m renderer.upscale MODEL IN.png OUT.png``: upscale one picture in its own process.

Prints one JSON line (architecture, scale) on success; exit status 2 with the reason on
standard error when the checkpoint or the picture cannot be used.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m renderer.upscale")
    parser.add_argument("model", type=Path)
    parser.add_argument("src", type=Path)
    parser.add_argument("dest", type=Path)
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from PIL import Image, UnidentifiedImageError

    from exhibits.files import atomic_path
    from renderer.device import choose_device
    from renderer.upscale import UpscaleError, describe, upscale

    try:
        device = str(choose_device(args.device))
        with Image.open(args.src) as im:
            image = im.convert("RGB")
        result = upscale(image, str(args.model), device)
        with atomic_path(args.dest) as tmp:
            result.save(tmp, format="PNG", compress_level=1)
    except (UpscaleError, UnidentifiedImageError, OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(describe(str(args.model), device)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
