"""``scalar_load``: a table lookup that LLVM will not turn into a vector gather.

LLVM vectorizes loops of table lookups (``table[index[i]]``) with AVX2 /
AVX-512 gather instructions. Gathers can be several times slower than plain
loads (4.6x for a 512-entry table on the CI machine; CPUs carrying the
Gather Data Sampling microcode fix are known for it), so hot lookups go
through this intrinsic: an unordered atomic load, which compiles to the
same single ``mov`` as an ordinary load but is never vectorized.
"""

from __future__ import annotations

from numba import types
from numba.extending import intrinsic


@intrinsic
def scalar_load(typingctx, array, index):
    """``array[index]`` for a 1-D C-contiguous array and a non-negative in-bounds index (no checks)."""
    if not (isinstance(array, types.Array) and array.ndim == 1 and isinstance(index, types.Integer)):
        return None
    sig = array.dtype(array, types.intp)

    def codegen(context, builder, signature, args):
        data = context.make_array(signature.args[0])(context, builder, args[0]).data
        align = context.get_abi_sizeof(context.get_data_type(signature.args[0].dtype))
        return builder.load_atomic(builder.gep(data, [args[1]]), ordering="unordered", align=align)

    return sig, codegen


@intrinsic
def scalar_store(typingctx, array, index, value):
    """``array[index] = value`` for a 1-D C-contiguous array and a non-negative in-bounds index (no checks)."""
    if not (isinstance(array, types.Array) and array.ndim == 1 and isinstance(index, types.Integer)):
        return None
    sig = types.void(array, types.intp, array.dtype)

    def codegen(context, builder, signature, args):
        data = context.make_array(signature.args[0])(context, builder, args[0]).data
        builder.store(args[2], builder.gep(data, [args[1]]))
        return context.get_dummy_value()

    return sig, codegen
