"""Draw ``docs/explain.png``: the default model's sample scene, its raw attention and three class explanations.

Panels, left to right: the scene; ``attention`` (the last layer's head-mean CLS row: class-agnostic);
``gae``, ``grad-rollout`` and ``transformer-attribution`` of the predicted class. Each map comes from
``attnvis.explain`` on the embedded default model with the PyTorch backend (the rules of
:mod:`attnvis.explain`, the same as the exported graph's) and is drawn by ``attnvis.render.render_map``
as ``visualize --method`` draws it (min-max normalized, JET, alpha 0.5).

Usage:
    python tools/explain_figure.py [--output docs/explain.png]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np

import attnvis
from attnvis.models import sample_image_path
from attnvis.render import render_map, write_image
from attnvis.runtime import load_image

METHODS = ("attention", "gae", "grad-rollout", "transformer-attribution")
TITLE_HEIGHT = 28


def panel(rgb: np.ndarray, title: str) -> np.ndarray:
    """``rgb`` under a dark strip with ``title`` in it."""
    strip = np.full((TITLE_HEIGHT, rgb.shape[1], 3), 24, np.uint8)
    cv2.putText(strip, title, (8, 19), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (235, 235, 235), 1, cv2.LINE_AA)
    return np.concatenate([strip, rgb], axis=0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default=str(Path(__file__).resolve().parents[1] / "docs" / "explain.png"))
    args = parser.parse_args()
    image = load_image(sample_image_path())
    panels = [panel(image, "scene")]
    for method in METHODS:
        ex = attnvis.explain("default", [str(sample_image_path())], method=method, backend="torch", device="cpu")
        _, overlay = render_map(ex.relevance[0], image)
        top = int(ex.prediction[0])
        panels.append(panel(overlay, f"{method}" + ("" if method == "attention" else f" ({ex.label(top)})")))
    gap = np.full((panels[0].shape[0], 6, 3), 24, np.uint8)
    row = np.concatenate([p for pair in zip(panels, [gap] * len(panels)) for p in pair][:-1], axis=1)
    print(f"predicted {ex.label(top)} (p = {float(ex.probability[0]):.3f}); wrote {write_image(args.output, row)}")


if __name__ == "__main__":
    main()
