"""``attnvis batch`` with captioners: captions and word files equal ``visualize``'s; bad images and missing features are failures."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from attnvis.batch.caption import CaptionOptions
from attnvis.batch.run import BatchConfig, run_batch
from attnvis.captioning import tiny
from attnvis.errors import InputError


def _records(root) -> dict:
    return {r["key"]: r for r in map(json.loads, (root / "manifest.jsonl").read_text().splitlines())}


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    src = tmp_path_factory.mktemp("scenes")
    for i in range(3):
        cv2.imwrite(str(src / f"s{i}.png"), cv2.cvtColor(tiny.make_caption_scene(2_000_000 + i).image, cv2.COLOR_RGB2BGR))
    (src / "broken.png").write_bytes(b"not a png")
    return src


def test_default_captioner_batch_equals_visualize(scenes, tmp_path):
    from attnvis.captioning.captioner import load_default_captioner
    from attnvis.captioning.features import FeatureLayout, read_image
    from attnvis.captioning.figures import CaptionVisOptions, write_caption_maps

    out = tmp_path / "batch"
    summary = run_batch(BatchConfig(inputs=[str(scenes)], output=str(out), model="default-captioner", backend="torch",
                                    device="cpu", progress=False, caption=CaptionOptions()))
    assert (summary.done, summary.failed) == (3, 1)
    records = _records(out)
    assert records["broken.png"]["status"] == "failed"
    captioner, backbone = load_default_captioner("torch", "cpu"), tiny.load_tiny_backbone()
    side = tiny.TINY_IMAGE // tiny.TINY_CELL
    for i in range(3):
        key = f"s{i}.png"
        image = read_image(scenes / key)
        result = captioner.caption(*tiny.tiny_features(backbone, image))
        assert records[key]["caption"] == result.sentences[0]
        assert records[key]["words"] == result.words(0)
        files = write_caption_maps(image, result, FeatureLayout(grid=(side, side)),
                                   CaptionVisOptions(output=tmp_path / f"vis{i}"))
        for f in (f for f in files if f.name.startswith("word_")):
            assert (out / key / f.name).read_bytes() == f.read_bytes(), f.name
    assert (out / "index.html").is_file()


def test_missing_feature_file_is_a_failure_not_a_crash(scenes, tmp_path):
    from attnvis.captioning.aoanet_images import AoAImageCaptioner, FeatureDirs
    from attnvis.captioning.captioner import load_default_captioner

    cap = AoAImageCaptioner(load_default_captioner("torch", "cpu"), None,
                            FeatureDirs(att_feats_dir=tmp_path, boxes_dir=tmp_path))
    with pytest.raises(InputError, match="no feature file .*s0.npz"):
        cap.caption([str(scenes / "s0.png")])


def test_region_feature_folders_match_by_stem(scenes, tmp_path):
    """AoANet features from folders as its data pipeline stores them; one image lacks its file."""
    from attnvis.captioning.aoanet_images import AoAImageCaptioner, FeatureDirs
    from attnvis.captioning.captioner import load_default_captioner
    from attnvis.captioning.features import read_image

    captioner = load_default_captioner("torch", "cpu")
    backbone = tiny.load_tiny_backbone()
    (tmp_path / "att").mkdir()
    (tmp_path / "box").mkdir()
    for i in range(2):  # s2 has no features
        _, att = tiny.tiny_features(backbone, read_image(scenes / f"s{i}.png"))
        np.savez(tmp_path / "att" / f"s{i}.npz", feat=att[0].numpy())
        np.save(tmp_path / "box" / f"s{i}.npy", np.tile(np.array([[0, 0, 8, 8]], np.float32), (att.shape[1], 1)))
    cap = AoAImageCaptioner(captioner, None, FeatureDirs(att_feats_dir=tmp_path / "att", boxes_dir=tmp_path / "box"))
    got = cap.caption([str(scenes / "s0.png")])[0]
    _, att = tiny.tiny_features(backbone, read_image(scenes / "s0.png"))
    assert got.sentence == captioner.caption(None, att).sentences[0]
    assert got.boxes is not None and got.cross_attention.shape[1:3] == (1, captioner.cfg.decoder_heads)
    with pytest.raises(InputError, match="no feature file"):
        cap.caption([str(scenes / "s2.png")])
