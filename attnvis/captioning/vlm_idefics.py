"""Idefics3 / SmolVLM: where each image token lies, from the tile markers the processor wrote into the prompt.

The processor resizes the image, cuts it into ``rows × cols`` square tiles
(row-major; each tile's tokens follow its ``<row_i_col_j>`` marker) and adds
the whole image, squashed to one tile, as a global view after them
(``<global-img>``). Each tile's patches are pixel-shuffled by the
connector's ``scale_factor`` into a square token grid, row-major. The tiles
cover the whole image evenly (the resize before cutting keeps it whole), so
tile ``(i, j)``'s box is that cell of a ``rows × cols`` division of the
original image. Without splitting, the one view is the whole image.
"""

from __future__ import annotations

import math
import re
from typing import Any

from attnvis.captioning.result import ImageTile
from attnvis.errors import ModelError

_MARKER = re.compile(r"<row_(\d+)_col_(\d+)>")


def idefics_tiles(m: Any, inputs: dict, b: int, size: tuple[int, int]) -> list[ImageTile]:
    """The tiles of image ``b`` (original ``size = (H, W)``), in the order of its image tokens."""
    ids = inputs["input_ids"][b].tolist()
    tokens = m.tokenizer.convert_ids_to_tokens([t for t in ids if t != m.image_token])
    cells = [(int(a) - 1, int(c) - 1) for a, c in (_MARKER.fullmatch(str(t)).groups() for t in tokens
                                                    if _MARKER.fullmatch(str(t) or ""))]
    count = sum(1 for t in ids if t == m.image_token)
    per_view = count // (len(cells) + 1)
    side = math.isqrt(per_view)
    if side * side != per_view or per_view * (len(cells) + 1) != count:
        raise ModelError(f"{m.path}: {count} image tokens do not split into {len(cells) + 1} square views")
    h, w = size
    whole = (0.0, 0.0, float(w), float(h))
    if not cells:
        return [ImageTile((side, side), whole, 0)]
    rows, cols = max(r for r, _ in cells) + 1, max(c for _, c in cells) + 1
    tiles = [ImageTile((side, side), (c * w / cols, r * h / rows, (c + 1) * w / cols, (r + 1) * h / rows), k * per_view)
             for k, (r, c) in enumerate(cells)]
    return tiles + [ImageTile((side, side), whole, len(cells) * per_view, thumbnail=True)]
