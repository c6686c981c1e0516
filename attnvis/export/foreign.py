"""Instrument an ONNX model that attnvis did not make: its attention weights become outputs ``attn_0 …``.

Pure ``onnx`` + ``onnxruntime`` + NumPy (no torch), so it works on the
light install. The steps: find the attention-weight tensors
(:mod:`attnvis.export._onnx_graph`), run the graph once with them exposed
to learn their shapes, work out the token layout, add the outputs (reshaped
to ``[B, heads, Q, K]`` and reduced as asked), write the ``attnvis.*``
metadata, and check that the model's own outputs did not change and that
every map's rows sum to 1.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from attnvis.errors import InputError, ModelError
from attnvis.export._onnx_graph import Site, default_opset, find_sites, fused_contrib_nodes, softmax_axis_is_last
from attnvis.export.report import MAP_TOLERANCE, OUTPUT_TOLERANCE, ExportReport, save_model
from attnvis.metadata import PROP_PREFIX, REDUCTIONS, LayerInfo, ModelMetadata, Preprocess, TokenLayout, size2

_PREFIX = "attnvis_"  # names of the tensors and nodes added here
_INT64_MAX = np.iinfo(np.int64).max


@dataclass(frozen=True)
class ForeignOptions:
    """What the graph does not say. Each field is the ``attnvis export`` flag of the same name.

    Attributes:
        image_size: ``(H, W)`` input size; needed when the input's height/width are dynamic.
        grid: patch grid ``(h, w)``; ``None`` infers it from the input size and the key length.
        prefix_tokens: tokens before the patches (CLS, ...); used with ``grid``.
        mean: per-channel mean of the preprocessing (after scaling to [0, 1]).
        std: per-channel standard deviation of the preprocessing.
        reduce: in-graph reduction, ``none`` | ``mean-heads`` | ``cls``.
    """

    image_size: tuple[int, int] | None = None
    grid: tuple[int, int] | None = None
    prefix_tokens: int = 0
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    reduce: str = "none"


@dataclass(frozen=True)
class _Input:
    """The one image input: name, static batch (``None``: dynamic), channels, (H, W), NumPy dtype."""

    name: str
    batch: int | None
    channels: int
    size: tuple[int, int]
    dtype: np.dtype

    def random(self, seed: int = 0) -> np.ndarray:
        shape = (self.batch or 2, self.channels, *self.size)
        return np.random.default_rng(seed).standard_normal(shape).astype(self.dtype)


def load_onnx(path: str | Path) -> onnx.ModelProto:
    """Read an ONNX file (with its external data); one clear error if it cannot be read."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"model file not found: {path}")
    try:
        model = onnx.load(str(path))
    except Exception as err:  # protobuf's DecodeError, OSError, ...: all mean "not a readable ONNX file"
        raise InputError(f"{path}: cannot read it as an ONNX model ({type(err).__name__}: {err})".splitlines()[0]) from None
    if not model.graph.node:  # an empty file parses as an empty message: protobuf has no magic number
        size = path.stat().st_size
        raise InputError(f"{path} is not an ONNX file ({'it is empty, 0 bytes' if size == 0 else 'no graph in it'}); "
                         "give the .onnx file your framework exported")
    return model


def has_attnvis_metadata(model: onnx.ModelProto) -> bool:
    """The model was made (or instrumented) by attnvis."""
    return any(p.key == PROP_PREFIX + "layers" for p in model.metadata_props)


def _dim(dim) -> int | None:
    return int(dim.dim_value) if dim.HasField("dim_value") and dim.dim_value > 0 else None


def image_input(model: onnx.ModelProto, path: Path, image_size: tuple[int, int] | None) -> _Input:
    """The graph's one ``(N, C, H, W)`` float input, with its size settled."""
    weights = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in weights]
    if len(inputs) != 1:
        raise ModelError(f"{path}: the graph takes {len(inputs)} inputs ({', '.join(i.name for i in inputs)}); "
                         "attnvis instruments models with one image input (N, C, H, W)")
    tensor = inputs[0].type.tensor_type
    dims = [_dim(d) for d in tensor.shape.dim]
    if len(dims) != 4 or tensor.elem_type not in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16):
        raise ModelError(f"{path}: input {inputs[0].name!r} is not a float (N, C, H, W) image tensor")
    static = (dims[2], dims[3]) if dims[2] and dims[3] else None
    image_size = size2(image_size)
    if static and image_size and tuple(image_size) != static:
        raise InputError(f"--image-size {image_size[0]}x{image_size[1]} does not match the input's fixed size "
                         f"{static[0]}x{static[1]} in {path}")
    size = static or image_size
    if size is None:
        raise InputError(f"{path}: input {inputs[0].name!r} has a dynamic height/width; pass --image-size HxW")
    dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tensor.elem_type))
    return _Input(inputs[0].name, dims[0], dims[1] or 3, (int(size[0]), int(size[1])), dtype)


def _expose(model: onnx.ModelProto, site: Site, i: int) -> str:
    """Make ``site``'s weights a tensor of ``model`` and return its name (an ``Attention`` op is asked for them)."""
    if site.op == "Softmax":
        return site.tensor
    node = model.graph.node[site.index]
    mode = next((a.i for a in node.attribute if a.name == "qk_matmul_output_mode"), 0)
    if len(node.output) > 3 and node.output[3]:
        if mode == 3:
            return node.output[3]
        node = copy.deepcopy(node)  # its scores feed something else: a twin gives the probabilities
        node.name = f"{_PREFIX}{node.name or 'attention'}_{i}"
        del node.output[:]
        model.graph.node.append(node)
    while len(node.output) < 3:
        node.output.append("")
    del node.output[3:]
    node.output.append(f"{_PREFIX}probs_{i}")
    for attr in [a for a in node.attribute if a.name == "qk_matmul_output_mode"]:
        node.attribute.remove(attr)
    node.attribute.append(helper.make_attribute("qk_matmul_output_mode", 3))  # 3: after the softmax
    return node.output[3]


def _session(model: onnx.ModelProto, path: Path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    except Exception as err:  # ORT raises its own Fail/InvalidGraph/NotImplemented types
        raise ModelError(f"{path}: ONNX Runtime cannot load it ({str(err).splitlines()[0][:300]})") from None


def _run(model: onnx.ModelProto, path: Path, feeds: dict[str, np.ndarray], names: list[str]) -> list[np.ndarray]:
    try:
        return _session(model, path).run(names, feeds)
    except ModelError:
        raise
    except Exception as err:
        raise ModelError(f"{path}: ONNX Runtime cannot run it on a {next(iter(feeds.values())).shape} batch "
                         f"({str(err).splitlines()[0][:300]})") from None


def _probe(model: onnx.ModelProto, tensors: list[str], path: Path, feeds: dict) -> list[np.ndarray]:
    """The raw weight tensors on one batch (the graph with them as extra outputs)."""
    probe = copy.deepcopy(model)
    names = [f"{_PREFIX}probe_{i}" for i in range(len(tensors))]
    for tensor, name in zip(tensors, names):
        probe.graph.node.append(helper.make_node("Identity", [tensor], [name]))
        probe.graph.output.append(helper.make_empty_tensor_value_info(name))
    return _run(probe, path, feeds, names)


def _as_maps(raw: np.ndarray, batch: int) -> np.ndarray | None:
    """``[B, heads, Q, K]`` from a rank-4 map or a ``[B·heads, Q, K]`` one; ``None`` if neither."""
    if raw.ndim == 4 and raw.shape[0] == batch:
        return raw
    if raw.ndim == 3 and raw.shape[0] % batch == 0:
        return raw.reshape(batch, raw.shape[0] // batch, *raw.shape[1:])
    return None


def _keep(model, sites, raw, batch) -> list[tuple[Site, str, np.ndarray]]:
    """The sites whose tensor is a last-axis softmax of a rank-3/4 map, with the map as ``[B, heads, Q, K]``."""
    kept = []
    for site, (tensor, arr) in zip(sites, raw):
        maps = _as_maps(arr, batch)
        if maps is not None and (site.op == "Attention" or softmax_axis_is_last(model, site, arr.ndim)):
            kept.append((site, tensor, maps))
    return kept


def _no_attention(path: Path, model: onnx.ModelProto) -> ModelError:
    ops = sorted({n.op_type for n in model.graph.node})
    return ModelError(f"{path}: No attention maps found: no Softmax over the last axis of a Q·Kᵀ product that "
                      f"multiplies V, and no Attention op; the graph's op types are: {', '.join(ops)}")


def _fused_error(path: Path, nodes: list[onnx.NodeProto]) -> ModelError:
    kinds = sorted({n.op_type for n in nodes})
    return ModelError(f"{path}: attention is fused into com.microsoft {', '.join(kinds)} ({len(nodes)} nodes, e.g. "
                      f"{nodes[0].name!r}), which cannot output its weights; instrument the graph as exported, before "
                      "onnxruntime.transformers' optimizer fused it, or export the PyTorch model with 'attnvis export'")


def infer_layout(k_len: int, size: tuple[int, int], grid: tuple[int, int] | None, prefix_tokens: int) -> TokenLayout:
    """The token layout of ``k_len`` keys on an ``size`` input.

    With ``grid``, it must fit (``prefix_tokens + h·w == k_len``). Without,
    the patch grid is ``(H/s, W/s)`` for a patch size ``s`` dividing both
    sides, with fewer prefix tokens than patches; exactly one must fit.

    Raises:
        InputError: the given grid does not fit, or none or several fit.
    """
    if grid is not None:
        h, w = grid
        if prefix_tokens < 0 or prefix_tokens + h * w != k_len:
            raise InputError(f"--grid {h}x{w} --prefix-tokens {prefix_tokens} gives {prefix_tokens + h * w} tokens, "
                             f"but the attention maps have {k_len} keys")
        return _layout(prefix_tokens, (h, w))
    height, width = size
    fits = [(k_len - (height // s) * (width // s), (height // s, width // s)) for s in range(1, min(size) + 1)
            if height % s == 0 and width % s == 0 and 0 <= k_len - (height // s) * (width // s) < (height // s) * (width // s)]
    if len(fits) != 1:
        found = "; ".join(f"{p} prefix + {g[0]}x{g[1]}" for p, g in fits) or "none"
        raise InputError(f"cannot tell how {k_len} keys map onto a {height}x{width} input (layouts that fit: {found}); "
                         "pass --grid HxW --prefix-tokens N")
    return _layout(*fits[0])


def _layout(prefix: int, grid: tuple[int, int]) -> TokenLayout:
    names = ("cls", *(f"prefix{i}" for i in range(1, prefix)))[:prefix]
    return TokenLayout(prefix_tokens=prefix, grid=(int(grid[0]), int(grid[1])), kind="grid",
                       cls_index=0 if prefix else None, prefix_names=names)


def _const(model: onnx.ModelProto, name: str, values) -> str:
    model.graph.initializer.append(numpy_helper.from_array(np.asarray(values, dtype=np.int64), name))
    return name


def _reduce_mean(model: onnx.ModelProto, x: str, axes: list[int], out: str) -> str:
    if default_opset(model) >= 18:
        axes_name = _const(model, f"{out}_axes", axes)
        model.graph.node.append(helper.make_node("ReduceMean", [x, axes_name], [out], keepdims=0))
    else:
        model.graph.node.append(helper.make_node("ReduceMean", [x], [out], axes=axes, keepdims=0))
    return out


def _add_output(model: onnx.ModelProto, tensor: str, i: int, maps: np.ndarray, batch: int | None,
                tokens: TokenLayout, reduction: str) -> None:
    """Append the nodes that turn weight tensor ``tensor`` (probed as ``maps``) into output ``attn_{i}``."""
    name, stem, (_, heads, q, k) = f"attn_{i}", f"{_PREFIX}{i}", maps.shape
    model.graph.node.append(helper.make_node("Reshape", [tensor, _const(model, f"{stem}_shape", [-1, heads, q, k])],
                                             [f"{stem}_maps"]))
    x = f"{stem}_maps"  # (B, heads, Q, K), also where the graph keeps (B·heads, Q, K)
    if reduction == "mean-heads":
        x = _reduce_mean(model, x, [1], f"{stem}_mean")
    elif reduction == "cls":
        if tokens.cls_index is None:
            x = _reduce_mean(model, x, [1, 2], f"{stem}_mean")  # no CLS: the mean over queries
        else:
            row = _const(model, f"{stem}_cls", tokens.cls_index)
            model.graph.node.append(helper.make_node("Gather", [x, row], [f"{stem}_row"], axis=2))
            x = _reduce_mean(model, f"{stem}_row", [1], f"{stem}_mean")
        model.graph.node.append(helper.make_node(
            "Slice", [x, _const(model, f"{stem}_start", [tokens.prefix_tokens]), _const(model, f"{stem}_end", [_INT64_MAX]),
                      _const(model, f"{stem}_axis", [1])], [f"{stem}_keys"]))
        x = f"{stem}_keys"
    model.graph.node.append(helper.make_node("Identity", [x], [name]))
    dims = {"none": [heads, q, k], "mean-heads": [q, k], "cls": [k - tokens.prefix_tokens]}[reduction]
    elem = helper.np_dtype_to_tensor_dtype(maps.dtype)
    model.graph.output.append(helper.make_tensor_value_info(name, elem, ["batch" if batch is None else batch, *dims]))


def _check_names(model: onnx.ModelProto, count: int, path: Path) -> None:
    taken = {name for node in model.graph.node for name in node.output} | {t.name for t in model.graph.initializer}
    clash = sorted(taken & {f"attn_{i}" for i in range(count)})
    if clash:
        raise ModelError(f"{path}: the graph already has tensors named {', '.join(clash)}; rename them first")


def reduce_maps(maps: np.ndarray, reduction: str, tokens: TokenLayout) -> np.ndarray:
    """NumPy reference of the in-graph reduction of ``[B, heads, Q, K]`` maps (as the PyTorch export does it)."""
    if reduction == "mean-heads":
        return maps.mean(axis=1)
    if reduction == "cls":
        keys = maps[..., tokens.prefix_tokens:]
        return keys.mean(axis=(1, 2)) if tokens.cls_index is None else keys[:, :, tokens.cls_index].mean(axis=1)
    return maps


def _max_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a.astype(np.float64) - b))) if a.size else 0.0


def _diffs(before: list[np.ndarray], after: list[np.ndarray], meta: ModelMetadata, maps: list[np.ndarray]):
    """(name, max abs diff, tolerance): the model's own outputs against the original's, then each
    map's row sums against 1 and the output against the weights found in the graph."""
    n = len(meta.model_outputs)
    rows = [(name, _max_diff(a, b), OUTPUT_TOLERANCE) for name, a, b in zip(meta.model_outputs, after[:n], before)]
    for i, (m, out) in enumerate(zip(maps, after[n:])):
        rows.append((f"attn_{i} row sums", _max_diff(m.sum(-1, dtype=np.float64), np.float64(1.0)), MAP_TOLERANCE))
        rows.append((f"attn_{i}", _max_diff(out, reduce_maps(m, meta.reduction, meta.tokens)), MAP_TOLERANCE))
    return rows


def instrument_onnx(model: str | Path, output: str | Path, options: ForeignOptions | None = None,
                    validate: bool = True) -> ExportReport:
    """Add the attention maps of an ONNX file made elsewhere as outputs ``attn_0 …``, with attnvis metadata.

    Args:
        model: the ``.onnx`` file (no attnvis metadata).
        output: the ``.onnx`` file to write.
        options: what the graph does not say (input size, token layout, preprocessing, reduction).
        validate: check the model's own outputs against the original's and the maps' row sums.

    Raises:
        InputError: unreadable file, already an attnvis model, flags that do not fit.
        ModelError: no attention found, fused attention, or validation past tolerance.
    """
    start, path, options = time.perf_counter(), Path(model), options or ForeignOptions()
    if options.reduce not in REDUCTIONS:
        raise InputError(f"reduce {options.reduce!r} is not one of {', '.join(REDUCTIONS)}")
    proto = load_onnx(path)
    if has_attnvis_metadata(proto):
        raise InputError(f"--model {path} is already an attnvis model; pass it to visualize/batch, not export")
    if fused_contrib_nodes(proto):
        raise _fused_error(path, fused_contrib_nodes(proto))
    source = image_input(proto, path, options.image_size)
    feeds = {source.name: source.random()}
    work = copy.deepcopy(proto)
    sites = find_sites(work)
    tensors = [_expose(work, site, i) for i, site in enumerate(sites)]
    raw = _probe(work, tensors, path, feeds) if sites else []
    kept = _keep(work, sites, list(zip(tensors, raw)), feeds[source.name].shape[0])
    if not kept:
        raise _no_attention(path, proto)
    meta = _metadata(proto, path, source, [(site, maps) for site, _, maps in kept], options)
    _check_names(work, len(kept), path)
    for i, (_, tensor, maps) in enumerate(kept):
        _add_output(work, tensor, i, maps, source.batch, meta.tokens, options.reduce)
    report = ExportReport(Path(output), meta, 0.0)
    if validate:
        before = _run(proto, path, feeds, meta.model_outputs)
        after = _run(work, path, feeds, meta.model_outputs + meta.attn_outputs)
        report.diffs = _diffs(before, after, meta, [maps for _, _, maps in kept])
        if not report.ok:  # nothing is written
            raise ModelError(f"{path}: the instrumented model disagrees with the original past tolerance\n{report.table()}")
    save_model(work, Path(output), {**{p.key: p.value for p in proto.metadata_props}, **meta.to_props()})
    report.seconds = time.perf_counter() - start
    return report


def _metadata(model: onnx.ModelProto, path: Path, source: _Input, kept: list[tuple[Site, np.ndarray]],
              options: ForeignOptions) -> ModelMetadata:
    """Layers from the probed maps, the token layout, the preprocessing the flags describe."""
    keys = sorted({maps.shape[-1] for _, maps in kept})
    if len(keys) != 1 and options.grid is None:
        raise ModelError(f"{path}: the attention layers have different key lengths ({', '.join(map(str, keys))}); "
                         "attnvis renders one token layout per model")
    tokens = infer_layout(keys[-1], source.size, options.grid, options.prefix_tokens)
    for _, maps in kept:
        infer_layout(maps.shape[-1], source.size, tokens.grid, tokens.prefix_tokens)  # every layer must fit
    layers = [LayerInfo(site.name, "self" if maps.shape[2] == maps.shape[3] else "cross", int(maps.shape[1]),
                        int(maps.shape[2]), int(maps.shape[3]), site.op) for site, maps in kept]
    pre = Preprocess(size=source.size, mean=tuple(options.mean), std=tuple(options.std))
    return ModelMetadata(layers=layers, tokens=tokens, preprocess=pre, reduction=options.reduce,
                         input_name=source.name, model_outputs=[o.name for o in model.graph.output],
                         source=path.name, extra={"instrumented": True})
