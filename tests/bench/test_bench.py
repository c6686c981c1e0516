"""`attnvis bench` on a tiny random ViT: it runs and writes well-formed JSON, a table and a PNG (not speeds)."""

import json

import numpy as np
import pytest
import torch

from attnvis.bench import _measure as _bench_measure, _report as _bench_report
from attnvis.cli import main

MICRO = ["bench", "--preset", "vit-micro", "--repeats", "2", "--warmup", "1", "--device", "cpu", "--threads", "1"]
# vit-micro: 2 layers, 4 heads, 1 CLS + 16 patch tokens, float32
ALL_MAPS = 2 * 4 * 17 * 17 * 4
CLS_MAPS = 2 * 16 * 4


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "result.json"
    with pytest.MonkeyPatch.context() as mp:  # conftest's cache fixture is per test; this one runs first
        mp.setenv("ATTNVIS_CACHE", str(tmp_path_factory.getbasetemp() / "attnvis-cache"))
        rc = main([*MICRO, "--batch-sizes", "1,2", "--json", str(out)])
    return rc, out


def test_bench_writes_json_markdown_and_plot(bench_run):
    rc, out = bench_run
    assert rc == 0
    result = json.loads(out.read_text())
    variants = ["torch-eager", "torchscript", "ort-all", "ort-cls", "ort-plain"]
    assert result["config"]["variants"] == variants
    assert [(r["variant"], r["batch"]) for r in result["rows"]] == [(v, b) for b in (1, 2) for v in variants]
    assert result["model"]["layers"] == 2 and result["model"]["tokens"] == 17
    for row in result["rows"]:
        lat = row["latency_ms"]
        assert 0 < lat["min"] <= lat["q1"] <= lat["median"] <= lat["q3"] <= lat["max"] and lat["n"] == 2
        assert row["images_per_s"] == pytest.approx(row["batch"] * 1e3 / lat["median"])
        assert row["cpu_ms"]["n"] == 2 and row["cpu_ms"]["median"] >= 0
    assert result["numba"]["first_call_s"] > 0 and result["numba"]["steady_call_ms"] > 0
    markdown = out.with_suffix(".md").read_text()
    assert "| variant | batch |" in markdown and markdown.count("| ort-cls |") == 2
    png = out.with_suffix(".png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    import matplotlib.image

    assert matplotlib.image.imread(str(png)).ndim == 3


def test_bench_map_bytes_per_variant(bench_run):
    _, out = bench_run
    rows = {(r["variant"], r["batch"]): r for r in json.loads(out.read_text())["rows"]}
    for batch in (1, 2):
        assert rows["torch-eager", batch]["map_bytes_per_image"] == ALL_MAPS
        assert rows["torchscript", batch]["map_bytes_per_image"] == ALL_MAPS
        assert rows["ort-all", batch]["map_bytes_per_image"] == ALL_MAPS
        assert rows["ort-cls", batch]["map_bytes_per_image"] == CLS_MAPS
        assert rows["ort-plain", batch]["map_bytes_per_image"] == 0
    checks = {(c["check"], c["batch"]): c for c in json.loads(out.read_text())["checks"]}
    assert checks["ort-cls / ort-all, map bytes", 2]["value"] == pytest.approx(CLS_MAPS / ALL_MAPS)


def test_bench_cuda_variants_run_on_cpu(tmp_path, capsys):
    """IO binding and the fp16 export (CUDA defaults) also run on the CPU provider: the code paths gpu_check needs."""
    out = tmp_path / "io.json"
    rc = main([*MICRO, "--batch-sizes", "2", "--variants", "ort-iobind-cls,ort-fp16-cls", "--no-render",
               "--json", str(out), "--plot", str(tmp_path / "p.png")])
    assert rc == 0 and (tmp_path / "p.png").stat().st_size > 0
    rows = json.loads(out.read_text())["rows"]
    assert [r["map_bytes_per_image"] for r in rows] == [CLS_MAPS, CLS_MAPS]
    assert "| ort-fp16-cls | 2 |" in capsys.readouterr().out


def test_bench_bad_variant_is_one_line(capsys):
    rc = main([*MICRO, "--variants", "ort-all,warp-drive"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "warp-drive" in err and "ort-cls" in err and len(err.splitlines()) == 1


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_bench_cuda_without_gpu_fails_clearly(capsys):
    rc = main(["bench", "--preset", "vit-micro", "--device", "cuda"])
    assert rc == 2 and "--device cuda" in capsys.readouterr().err


def test_bench_flags_rejected():
    with pytest.raises(SystemExit):
        main(["bench", "--preset", "vit-micro", "--model", "default"])  # one or the other
    with pytest.raises(SystemExit):
        main(["bench", "--preset", "vit-micro", "--batch-sizes", "8,zero"])


def test_interleaved_is_round_robin_after_warmups():
    calls = []
    runs = {name: (lambda name=name: calls.append(name)) for name in "ABC"}
    cpu = {}
    times = _bench_measure.interleaved(runs, warmup=2, repeats=3, settle_s=0, cpu=cpu)
    assert calls == list("AABBCC") + list("ABC") * 3
    assert {k: len(v) for k, v in times.items()} == {"A": 3, "B": 3, "C": 3}
    assert {k: len(v) for k, v in cpu.items()} == {"A": 3, "B": 3, "C": 3}


def test_latency_stats_quartiles():
    stats = _bench_measure.latency_stats([0.001, 0.002, 0.003, 0.004, 0.100])
    assert stats["median"] == pytest.approx(3.0) and stats["q1"] == pytest.approx(2.0)
    assert stats["q3"] == pytest.approx(4.0) and stats["max"] == pytest.approx(100.0)


def _row(variant, ms, map_bytes, batch=8):
    return {"variant": variant, "batch": batch, "latency_ms": {"median": ms}, "images_per_s": batch * 1e3 / ms,
            "map_bytes_per_image": map_bytes}


def test_goal_checks_pass_and_fail():
    rows = [_row("torch-eager", 100.0, 1000.0), _row("ort-all", 80.0, 1000.0), _row("ort-cls", 60.0, 2.0),
            _row("ort-plain", 70.0, 0.0)]
    checks = {c["check"]: c for c in _bench_report.goal_checks(rows, "cuda")}
    assert checks["ort-all vs torch-eager, images/s"]["value"] == pytest.approx(1.25)
    assert checks["ort-all vs torch-eager, images/s"]["met"]
    assert not checks["ort-cls / ort-all, map bytes"]["met"]  # 2/1000 > 1/1000
    assert checks["ort-all / ort-plain - 1, latency"]["value"] == pytest.approx(80 / 70 - 1)
    assert not checks["ort-all / ort-plain - 1, latency"]["met"]
    assert checks["best ORT vs torch-eager, images/s"]["variant"] == "ort-cls"
    assert "best ORT vs torch-eager, images/s" not in {c["check"] for c in _bench_report.goal_checks(rows, "cpu")}


def test_host_peak_sees_an_allocation():
    peak = _bench_measure.host_peak_mb(lambda: np.ones(64 * 2**20 // 8).sum())  # 64 MiB touched
    if peak is None:
        pytest.skip("no /proc/self/clear_refs here")
    assert peak >= 60
