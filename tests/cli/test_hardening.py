"""Hostile and careless input on the command line: one clear line, a non-zero exit, nothing silently wrong."""

from __future__ import annotations

import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest

from attnvis.cli import build_parser, main
from attnvis.models import sample_image_path

ROOT = Path(__file__).resolve().parents[2]


def attnvis(*args, env=None):
    return subprocess.run([sys.executable, "-m", "attnvis", *map(str, args)], capture_output=True, text=True, env=env)


def one_line_error(capsys, code: int, *needles: str) -> str:
    err = capsys.readouterr().err.strip()
    assert code != 0 and len(err.splitlines()) == 1, err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in err, err
    return err


def bomb_png(path: Path, side: int = 30_000) -> Path:
    """A valid PNG header declaring side × side pixels, followed by a few bytes of IDAT (a decompression bomb)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + header + chunk(b"IDAT", zlib.compress(b"\0" * 1000)) + chunk(b"IEND", b""))
    return path


@pytest.mark.parametrize("side", [30_000, 8_000])  # past PIL's own bomb limit, and under it but over ours
def test_visualize_refuses_a_decompression_bomb_from_its_header(tmp_path, capsys, side):
    code = main(["visualize", "--image", str(bomb_png(tmp_path / "bomb.png", side)), "--output", str(tmp_path / "o")])
    one_line_error(capsys, code, "bomb.png", "--max-pixels", f"{side * side:,}")
    assert not (tmp_path / "o").exists()  # refused before any work


def test_visualize_max_pixels_is_the_flag_that_raises_the_limit(tmp_path, capsys):
    code = main(["visualize", "--image", str(sample_image_path()), "--output", str(tmp_path / "o"), "--max-pixels", "100"])
    one_line_error(capsys, code, "over --max-pixels 100")


def test_batch_names_a_decompression_bomb(tmp_path, capsys):
    import json

    folder = tmp_path / "in"
    folder.mkdir()
    bomb_png(folder / "bomb.png")
    code = main(["batch", str(folder), "--output", str(tmp_path / "out"), "--no-progress"])
    assert code == 3
    record = json.loads((tmp_path / "out" / "manifest.jsonl").read_text().splitlines()[0])
    assert "decompression bomb" in record["error"] and "900,000,000 pixels" in record["error"]


@pytest.mark.parametrize("alpha", ["1.5", "nan", "-1", "inf"])
def test_bad_alpha_is_one_line(tmp_path, capsys, alpha):
    code = main(["visualize", "--image", str(sample_image_path()), "--output", str(tmp_path / "o"), "--alpha", alpha])
    one_line_error(capsys, code, "--alpha", "[0, 1]")


def test_float_tiff_is_refused_in_visualize(tmp_path, capsys):
    from PIL import Image

    Image.fromarray(np.random.default_rng(0).random((20, 20), dtype=np.float32), mode="F").save(tmp_path / "f.tif")
    code = main(["visualize", "--image", str(tmp_path / "f.tif"), "--output", str(tmp_path / "o")])
    one_line_error(capsys, code, "f.tif", "32-bit float")


def test_output_that_is_a_file_is_refused_before_any_work(tmp_path, capsys):
    (tmp_path / "taken").write_text("x")
    code = main(["visualize", "--image", str(sample_image_path()), "--output", str(tmp_path / "taken")])
    one_line_error(capsys, code, "--output", "is a file")


def test_export_output_that_is_a_folder_is_refused_before_any_work(tmp_path, capsys):
    code = main(["export", "--model", "default", "--output", str(tmp_path)])
    one_line_error(capsys, code, "--output", "is a folder", "model.onnx")


@pytest.mark.parametrize("family", ["timm:vit_tiny_patch16_224", "torchvision:vit_b_16"])
def test_zoo_models_need_weights_or_an_explicit_random_weights(tmp_path, capsys, family):
    code = main(["visualize", "--image", str(sample_image_path()), "--model", family, "--output", str(tmp_path / "o")])
    one_line_error(capsys, code, "--weights", "--random-weights")


def test_random_weights_flag_runs_a_zoo_model(tmp_path, capsys):
    pytest.importorskip("timm")
    code = main(["visualize", "--image", str(sample_image_path()), "--model", "timm:vit_tiny_patch16_224",
                 "--random-weights", "--backend", "torch", "--layer", "0", "--output", str(tmp_path / "o")])
    assert code == 0, capsys.readouterr().err
    assert "for 1 layer to" in capsys.readouterr().out  # "1 layer", not "1 layers"


@pytest.fixture(scope="module")
def cls_model(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("cls") / "cls.onnx"
    assert main(["export", "--model", "default", "--reduce", "cls", "--output", str(path)]) == 0
    return path


@pytest.mark.parametrize("flags", [["--no-avg-heads"], ["--no-avg-heads", "--head", "1"], ["--head", "0"]])
def test_per_head_flags_on_a_reduced_export_are_refused(tmp_path, capsys, cls_model, flags):
    capsys.readouterr()
    code = main(["visualize", "--image", str(sample_image_path()), "--model", str(cls_model), *flags,
                 "--output", str(tmp_path / "o")])
    one_line_error(capsys, code, "--reduce cls")


def test_one_head_files_carry_the_head_index(tmp_path):
    out = tmp_path / "o"
    for head in ("0", "1"):
        assert main(["visualize", "--image", str(sample_image_path()), "--head", head, "--layer", "1",
                     "--output", str(out)]) == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == ["attn_map_layer_1_blocks.1.attn_head_0.png", "attn_map_layer_1_blocks.1.attn_head_1.png",
                     "heatmap_layer_1_blocks.1.attn_head_0.png", "heatmap_layer_1_blocks.1.attn_head_1.png"]


def test_torchscript_file_given_to_visualize_says_what_to_pass(tmp_path, capsys):
    script = tmp_path / "model.pt"
    assert main(["export", "--model", "default", "--format", "torchscript", "--output", str(script)]) == 0
    capsys.readouterr()
    code = main(["visualize", "--image", str(sample_image_path()), "--model", str(script), "--output", str(tmp_path / "o")])
    one_line_error(capsys, code, "TorchScript", "attnvis export --model M --output model.onnx")


def test_infos_that_is_not_a_pickle(tmp_path, capsys):
    (tmp_path / "infos.pkl").write_bytes(b"\x89PNG not a pickle")
    (tmp_path / "model.pth").write_bytes(b"")
    code = main(["visualize", "--image", str(sample_image_path()), "--model", str(tmp_path / "model.pth"),
                 "--infos_path", str(tmp_path / "infos.pkl"), "--output", str(tmp_path / "o")])
    one_line_error(capsys, code, "--infos_path", "not a readable pickle")


def test_wrong_backbone_weights(tmp_path, capsys):
    import torch

    from attnvis.captioning.features import reference_resnet
    from attnvis.errors import ModelError

    torch.save({"fc.weight": torch.zeros(3, 3)}, tmp_path / "wrong.pth")
    (tmp_path / "empty.pth").write_bytes(b"")
    for path in (tmp_path / "wrong.pth", tmp_path / "empty.pth"):
        with pytest.raises(ModelError, match="--backbone-weights .* is not a torchvision resnet101 state dict") as err:
            reference_resnet(path)
        assert "\n" not in str(err.value)


def test_every_flag_has_help():
    parser = build_parser()
    missing = []
    for name, sub in parser._subparsers._group_actions[0].choices.items():
        missing += [f"{name} {a.option_strings or a.dest}" for a in sub._actions if not a.help]
    assert missing == []


def test_gitignore_keeps_a_venv_out():
    assert ".venv/" in (ROOT / ".gitignore").read_text().splitlines()


def test_bench_plot_labels_only_a_few_minor_ticks():
    from attnvis.bench._report import minor_label

    assert [minor_label(v) for v in (2, 3, 4, 5, 6, 7, 8, 9, 20, 30, 50, 0.2, 0.5, 0.7)] == \
        ["2", "", "", "5", "", "", "", "", "20", "", "50", "0.2", "0.5", ""]


def test_bench_plot_without_matplotlib_fails_before_the_work(tmp_path):
    blocker = tmp_path / "block"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text("import sys\nsys.modules['matplotlib'] = None\n")
    env = {**__import__("os").environ, "PYTHONPATH": str(blocker)}
    result = attnvis("bench", "--preset", "vit-micro", "--plot", tmp_path / "p.png", env=env)
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == [
        'attnvis: error: the benchmark plot (--plot, or beside --json; --no-plot skips it) needs matplotlib, '
        'which is not installed: pip install "attnvis[bench]"']
    assert "[bench] export" not in result.stderr  # nothing was run


def test_disk_full_names_the_file(tmp_path, capsys, monkeypatch):
    import errno
    import os

    real = os.write

    def full(fd, data):
        if len(data) > 1000:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd, data)

    monkeypatch.setattr(os, "write", full)
    code = main(["visualize", "--image", str(sample_image_path()), "--output", str(tmp_path / "o")])
    err = one_line_error(capsys, code, str(tmp_path / "o"), "the disk is full")
    assert ": no space left on device" in err and not err.startswith("attnvis: error: :")
    assert not [p for p in (tmp_path / "o").iterdir() if p.name.endswith(".tmp")]  # nothing half-written


@pytest.mark.parametrize("args", [["demo", "--caption"], ["demo"]])
def test_cuda_without_a_gpu_is_attnvis_own_line(tmp_path, capsys, args):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present: --device cuda is usable here")
    code = main([*args, "--device", "cuda", "--output", str(tmp_path / "o")])
    one_line_error(capsys, code, "--device cuda", "--device cpu")
