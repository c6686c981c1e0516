"""Models given on the command line: an empty .onnx, a beam past the vocabulary, the embedded captioner in visualize."""

from __future__ import annotations

import shutil

import pytest

from attnvis.cli import main
from attnvis.models import sample_image_path


def one_line_error(capsys, code: int, *needles: str) -> str:
    err = capsys.readouterr().err.strip()
    assert code != 0 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, err
    return err


@pytest.mark.parametrize("command", ["visualize", "batch", "export"])
def test_empty_onnx_file_is_not_an_onnx_file(tmp_path, capsys, command):
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    args = {"visualize": ["visualize", "--image", str(sample_image_path())],
            "batch": ["batch", str(sample_image_path()), "--no-progress"], "export": ["export"]}[command]
    code = main([*args, "--model", str(empty), "--output", str(tmp_path / "o")])
    one_line_error(capsys, code, "empty.onnx is not an ONNX file", "0 bytes")
    assert not (tmp_path / "o").exists()


def test_batch_beam_size_past_the_vocabulary_is_refused_before_any_image(tmp_path, capsys):
    images = tmp_path / "in"
    images.mkdir()
    for i in range(3):
        shutil.copy(sample_image_path(), images / f"{i}.png")
    code = main(["batch", str(images), "--model", "default-captioner", "--backend", "torch", "--beam-size", "100000",
                 "--no-progress", "--output", str(tmp_path / "o")])
    one_line_error(capsys, code, "--beam-size 100000", "vocabulary")
    assert code != 3 and not (tmp_path / "o").exists()  # refused up front, not image by image


def test_visualize_takes_the_default_captioner(tmp_path, capsys):
    from attnvis.captioning.load import load_captioner

    out = tmp_path / "o"
    code = main(["visualize", "--image", str(sample_image_path()), "--model", "default-captioner",
                 "--backend", "torch", "--output", str(out)])
    assert code == 0, capsys.readouterr().err
    (expected,) = load_captioner("default-captioner", backend="torch", device="cpu").caption([str(sample_image_path())])
    assert f"caption: {expected.sentence!r}" in capsys.readouterr().out  # the same caption as batch/load_captioner
    words = [w for w, s in zip(expected.words, expected.special) if not s]
    assert sorted(p.name for p in out.glob("word_*.png")) == sorted(f"word_{t}_{w}.png" for t, w in enumerate(words))
    assert (out / "caption_strip.png").is_file()
