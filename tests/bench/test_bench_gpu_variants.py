"""The GPU benchmark's variant list and build logic, checked on the CPU (the timings need a GPU: gpu_check.sh)."""

import numpy as np
import pytest

from attnvis.bench._models import preset_source
from attnvis.bench._variants import TORCH_VARIANTS, OrtBound, TorchPinned, build, default_variants
from attnvis.bench.config import _FILE_ORDER, VARIANTS
from attnvis.errors import InputError

# vit-micro: 2 layers, 4 heads, 1 CLS + 16 patch tokens, float32
ALL_MAPS = 2 * 4 * 17 * 17 * 4
CLS_MAPS = 2 * 16 * 4


def test_cuda_defaults_hold_the_fair_baseline_and_every_precision():
    cuda = default_variants("cuda")
    for name in ("torch-eager", "torch-pinned", "torch-pinned-cls", "torch-compile", "torch-compile-cls",
                 "ort-all", "ort-cls", "ort-plain", "ort-fp16-all", "ort-fp16-cls", "ort-fp16-plain",
                 "ort-graph-fp16-cls"):
        assert name in cuda
    cpu = default_variants("cpu")
    assert not any(n.startswith(("torch-pinned", "torch-compile", "ort-fp16", "ort-graph")) for n in cpu)
    assert set(TORCH_VARIANTS) == {n for n in VARIANTS if n.startswith("torch")}


def test_every_file_kind_is_exported_in_order():
    kinds = {kind for _, kind, _ in VARIANTS.values()} - {None}
    assert kinds <= set(_FILE_ORDER)
    assert _FILE_ORDER[-1] == "torchscript"
    for kind in kinds - {"torchscript"}:
        base = kind.removeprefix("fp16-")
        assert _FILE_ORDER.index(base) <= _FILE_ORDER.index(kind)  # fp16 files are made from the fp32 ones


@pytest.mark.parametrize("name, reduce, compiled", [("torch-pinned", "none", False), ("torch-pinned-cls", "cls", False),
                                                    ("torch-compile", "none", True), ("torch-compile-cls", "cls", True)])
def test_torch_variants_build_with_their_reduction(name, reduce, compiled):
    source = preset_source("vit-micro")
    runner = build(name, {}, source, "cpu", 1, 1)
    assert isinstance(runner, TorchPinned) and runner.compiled is compiled
    assert runner.model_is_copy(source.model)
    if not compiled:  # compiling takes minutes on a CPU; the GPU run does it
        x = np.random.default_rng(0).standard_normal((3, 3, 32, 32), dtype=np.float32)
        assert runner.run(x) == 3 * (CLS_MAPS if reduce == "cls" else ALL_MAPS)
        assert runner.run(x) == 3 * (CLS_MAPS if reduce == "cls" else ALL_MAPS)  # buffers reused


def test_cuda_graph_variant_refuses_the_cpu(tmp_path):
    from attnvis.bench._models import export_file

    source = preset_source("vit-micro")
    files = {"fp16-cls": export_file("fp16-cls", source, tmp_path, "cpu")}
    with pytest.raises(InputError, match="CUDA graphs"):
        build("ort-graph-fp16-cls", files, source, "cpu", 1, 1)
    runner = build("ort-fp16-cls", files, source, "cpu", 1, 1)
    assert not isinstance(runner, OrtBound)
    x = np.zeros((2, 3, 32, 32), np.float32)
    assert runner.run(x) == 2 * CLS_MAPS
