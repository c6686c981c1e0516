"""IO binding for :class:`~attnvis.runtime.OrtSession`: each output where it is wanted, copied once.

``session.run`` copies every output to fresh pageable host memory after each
call: for ViT-B/16's full maps that is 21 MiB an image, and the copy, not the
model, bounds the rate. With IO binding the input is uploaded once per batch
(or bound in place when it already is a CUDA array), the model's own outputs
and reduced maps (``cls``, ``mean-heads``, an explanation's relevance rows)
are written side by side into one device buffer (the "slab") and come back
in one copy per batch into a page-locked ("pinned") host buffer, both reused
across calls of the same batch size; full ``(B, heads, Q, K)`` maps stay on
the device as ``OrtValue`` s unless the caller asks for them on the host.

With ``cuda_graph`` every input and output is a fixed device buffer per batch
size (ORT records the launches of the first run of a shape and replays them);
host copies are made from those buffers after the run.

Without a GPU (tests, ``--device cpu`` with ``io_binding=True``) the slab is
host memory that ORT writes directly, so the bookkeeping is checked everywhere.
"""

from __future__ import annotations

import ctypes
import weakref

import numpy as np

from attnvis.errors import ModelError

_CUDART = ("libcudart.so.13", "libcudart.so.12", "libcudart.so")


def _cudart():
    """The CUDA runtime library ORT's CUDA provider loaded, or None."""
    for name in _CUDART:
        try:
            return ctypes.CDLL(name)
        except OSError:
            continue
    return None


def pinned_empty(shape: tuple[int, ...], dtype=np.float32) -> np.ndarray | None:
    """A page-locked host array (``cudaHostAlloc``), freed with the array; None where CUDA cannot give one."""
    lib = _cudart()
    nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
    if lib is None or nbytes == 0:
        return None
    ptr = ctypes.c_void_p()
    if lib.cudaHostAlloc(ctypes.byref(ptr), ctypes.c_size_t(nbytes), 0) != 0 or not ptr.value:
        return None
    raw = np.ctypeslib.as_array((ctypes.c_uint8 * nbytes).from_address(ptr.value))
    array = raw.view(dtype).reshape(shape)
    weakref.finalize(raw, lib.cudaFreeHost, ptr)  # freed when the last view of it goes
    return array


def static_shape(dims: list, batch: int) -> tuple[int, ...] | None:
    """An output's shape at ``batch`` from ORT's declared dims (the first is the batch), or None if another dim is symbolic."""
    rest = dims[1:]
    if not all(isinstance(d, int) and d >= 0 for d in rest):
        return None
    return (batch, *rest)


class Binder:
    """IO binding over one ``onnxruntime.InferenceSession``.

    Args:
        session: the ORT session.
        device: ``cuda`` or ``cpu``: where the session runs.
        full_maps: the ``attn_*`` outputs are full (B, heads, Q, K) maps
            (reduction ``none``): these stay on the device unless asked for.
        cuda_graph: the session was made with CUDA graphs: bind fixed device buffers.
    """

    def __init__(self, session, device: str, full_maps: bool, cuda_graph: bool = False):
        self.session, self.device, self.full_maps, self.cuda_graph = session, device, full_maps, cuda_graph
        self.inputs = [i.name for i in session.get_inputs()]
        self.outputs = session.get_outputs()
        self.binding = session.io_binding()
        self.pinned = device == "cuda"  # false once a pinned allocation fails: pageable buffers then
        self._slabs: dict[int, tuple] = {}  # batch → (device OrtValue or None, host array): see _slab
        self._fixed: dict[int, tuple[list, list]] = {}  # batch → (input OrtValues, output OrtValues): CUDA graphs

    def placement(self, name: str, host_maps: bool) -> str:
        """``host`` or ``device``: where output ``name`` goes."""
        if self.device == "cuda" and self.full_maps and name.startswith("attn_") and not host_maps:
            return "device"
        return "host"

    def _slab_layout(self, batch: int, host_maps: bool) -> dict[str, tuple[int, tuple[int, ...]]]:
        """name → (offset in floats, shape) of the outputs that go to the host in the slab: fixed shapes, not full maps."""
        layout, offset = {}, 0
        for out in self.outputs:
            shape = static_shape(list(out.shape), batch)
            if shape is None or self.placement(out.name, host_maps) == "device" or \
                    (self.full_maps and out.name.startswith("attn_")):
                continue
            layout[out.name] = (offset, shape)
            offset += int(np.prod(shape))
        return layout

    def _slab(self, batch: int, floats: int) -> tuple:
        """(device buffer or None, host buffer) of ``floats`` float32 for ``batch``, made once per batch size.

        On CUDA, ORT writes the outputs into the device buffer and one copy brings
        it to the host buffer (page-locked where CUDA gives one); on the CPU, ORT
        writes the host buffer itself.
        """
        slab = self._slabs.get(batch)
        if slab is None or slab[1].size != floats:
            device = None
            if self.device == "cuda":
                import onnxruntime as ort

                device = ort.OrtValue.ortvalue_from_shape_and_type((max(floats, 1),), np.float32, "cuda", 0)
            host = pinned_empty((max(floats, 1),)) if self.pinned else None
            if host is None:
                self.pinned = False
                host = np.empty(max(floats, 1), np.float32)
            slab = self._slabs[batch] = (device, host[:floats])
        return slab

    def _copy_back(self, device, host: np.ndarray) -> None:
        """The slab's one device → host copy (``cudaMemcpy``: the run has finished, ORT synchronized its stream)."""
        lib = _cudart()
        if lib is None or lib.cudaMemcpy(ctypes.c_void_p(host.ctypes.data), ctypes.c_void_p(device.data_ptr()),
                                         ctypes.c_size_t(host.nbytes), 2) != 0:  # 2: cudaMemcpyDeviceToHost
            host[:] = device.numpy()[:host.size]

    def _bind_input(self, name: str, x) -> int:
        cai = getattr(x, "__cuda_array_interface__", None)
        if cai is not None:  # a CUDA array (torch, numba, CuPy): bound in place, no copy
            if cai["typestr"] != "<f4" or cai.get("strides") not in (None,):
                raise ModelError(f"input {name}: a CUDA array must be C-contiguous float32")
            self.binding.bind_input(name, "cuda", 0, np.float32, list(cai["shape"]), cai["data"][0])
            return int(cai["shape"][0])
        x = np.asarray(x)
        x = np.ascontiguousarray(x, dtype=x.dtype if x.dtype.kind in "iub" else np.float32)  # an explanation's int64 target
        self.binding.bind_cpu_input(name, x)  # uploaded once, when the run starts
        return x.shape[0]

    def run(self, inputs: list, host_maps: bool = True) -> list:
        """Run one batch; outputs in the session's order, NumPy on the host or ``OrtValue`` on the device."""
        if self.cuda_graph:
            return self._run_graph(inputs, host_maps)
        batch = 0
        for name, x in zip(self.inputs, inputs):
            batch = self._bind_input(name, x)
        layout = self._slab_layout(batch, host_maps)
        device, host = self._slab(batch, sum(int(np.prod(shape)) for _, shape in layout.values()))
        base = device.data_ptr() if device is not None else host.ctypes.data
        for out in self.outputs:
            if out.name in layout:  # small outputs, side by side in the slab
                offset, shape = layout[out.name]
                self.binding.bind_output(out.name, self.device, 0, np.float32, list(shape), base + 4 * offset)
            elif self.placement(out.name, host_maps) == "device":
                self.binding.bind_output(out.name, "cuda", 0)
            else:
                self.binding.bind_output(out.name, "cpu")  # large or dynamic: ORT allocates, once
        self.session.run_with_iobinding(self.binding)
        values = self.binding.get_outputs()
        if device is not None and layout:
            self._copy_back(device, host)
        kept = host.copy() if layout else host  # one host copy: the next call reuses the slab
        results = []
        for value, out in zip(values, self.outputs):
            if out.name in layout:
                offset, shape = layout[out.name]
                results.append(kept[offset:offset + int(np.prod(shape))].reshape(shape))
            else:
                results.append(self._fetch(value, out.name, host_maps))
        return results

    def _fetch(self, value, name: str, host_maps: bool):
        return value if self.placement(name, host_maps) == "device" else value.numpy()

    def _run_graph(self, inputs: list, host_maps: bool) -> list:
        """CUDA graphs: fixed device buffers per batch size, one recorded graph per batch size."""
        import onnxruntime as ort

        arrays = [np.ascontiguousarray(x, dtype=np.float32) for x in inputs]
        batch = arrays[0].shape[0]
        ins, outs = self._graph_buffers(arrays, batch)
        for buf, x in zip(ins, arrays):
            buf.update_inplace(x)
        options = ort.RunOptions()
        options.add_run_config_entry("gpu_graph_id", str(batch))
        self.session.run_with_iobinding(self.binding, options)
        return [self._fetch(v, out.name, host_maps) for v, out in zip(outs, self.outputs)]

    def _graph_buffers(self, arrays: list[np.ndarray], batch: int) -> tuple[list, list]:
        import onnxruntime as ort

        if batch not in self._fixed:
            ins = [ort.OrtValue.ortvalue_from_shape_and_type(x.shape, np.float32, "cuda", 0) for x in arrays]
            outs = []
            for out in self.outputs:
                shape = static_shape(list(out.shape), batch)
                if shape is None:
                    raise ModelError(f"CUDA graphs need outputs of fixed shape; {out.name} has {out.shape}: "
                                     "run without CUDA graphs")
                outs.append(ort.OrtValue.ortvalue_from_shape_and_type(shape, np.float32, "cuda", 0))
            self._fixed[batch] = (ins, outs)
        ins, outs = self._fixed[batch]
        self.binding.clear_binding_inputs()
        self.binding.clear_binding_outputs()
        for name, value in zip(self.inputs, ins):
            self.binding.bind_ortvalue_input(name, value)
        for out, value in zip(self.outputs, outs):
            self.binding.bind_ortvalue_output(out.name, value)
        return ins, outs
