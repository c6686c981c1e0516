"""Make ``docs/vlm.png``: the tests' tiny random-weight Idefics3 (2×2 tiles + global view) on a synthetic scene.

    python docs/vlm_figure.py

The weights are random: the picture shows where each map goes (tiles where
the processor cut them, the global view beside), not what a trained model sees.
"""

import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    import cv2
    import numpy as np

    from attnvis.captioning import tiny
    from attnvis.captioning.figures import caption_strip
    from attnvis.captioning.load import load_captioner
    from attnvis.captioning.word_figures import paint_word, word_map
    from tests.captioning.tiny_vlms import make_idefics3

    image = cv2.resize(tiny.make_caption_scene(7).image, (160, 120), interpolation=cv2.INTER_NEAREST)
    with tempfile.TemporaryDirectory() as tmp:
        cap = load_captioner(str(make_idefics3(Path(tmp) / "idefics3")), backend="torch", device="cpu")
        (res,) = cap.caption([image], prompt="what is this", max_new_tokens=4)
    words = res.word_indices()[:3]
    tiles = [paint_word(word_map(res, t), image, res)[1] for t in words]
    strip = caption_strip(tiles, [res.words[t] for t in words], height=110)
    cv2.imwrite(str(ROOT / "docs" / "vlm.png"), cv2.cvtColor(np.ascontiguousarray(strip), cv2.COLOR_RGB2BGR),
                [cv2.IMWRITE_PNG_COMPRESSION, 9])
    print(res.sentence, res.image_grid)


if __name__ == "__main__":
    main()
