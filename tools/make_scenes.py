"""Write held-out scenes of the embedded default model as PNGs, with their object boxes as ``boxes.json``.

The boxes are ``make_scene``'s own (``[x0, y0, x1, y1]`` in the scene's pixels), in the form
``attnvis evaluate --boxes`` reads.

Usage:
    python tools/make_scenes.py --count 200 --output scenes/
    attnvis evaluate scenes/ --boxes scenes/boxes.json --output eval/
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import cv2

from attnvis.models.tiny import HELD_OUT_SEED, make_scene


def write_scenes(folder: Path, count: int, first_seed: int = HELD_OUT_SEED + 100) -> Path:
    """``count`` held-out scenes as ``scene_{seed}.png`` and their boxes; returns the boxes file."""
    folder.mkdir(parents=True, exist_ok=True)
    boxes = {}
    for seed in range(first_seed, first_seed + count):
        image, box = make_scene(seed)
        name = f"scene_{seed}.png"
        cv2.imwrite(str(folder / name), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        boxes[name] = [list(map(int, box))]
    path = folder / "boxes.json"
    path.write_text(json.dumps(boxes, indent=0))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--output", type=Path, default=Path("scenes"))
    args = parser.parse_args()
    print(write_scenes(args.output, args.count))


if __name__ == "__main__":
    main()
