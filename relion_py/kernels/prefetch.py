"""Software prefetching from Numba kernels: ``prefetch(arr, i)`` asks the CPU to start loading ``arr[i]``
(a 1-D array) into all cache levels. For reads the hardware prefetcher cannot foresee: the random taps of
the backward insertion, and the rows of tilt-image windows, which lie one page apart so that every row
costs a TLB miss.
"""
from llvmlite import ir
from llvmlite.binding import llvm_version_info
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

# LLVM ≥ 15 has opaque pointers (llvm.prefetch.p0); older versions mangle the pointee type
_PREFETCH_NAME = "llvm.prefetch.p0" if llvm_version_info >= (15,) else "llvm.prefetch.p0i8"


@intrinsic
def prefetch(typingctx, arr, idx):
    """``llvm.prefetch`` (read, keep in all cache levels) of ``arr[idx]`` of a 1-D array."""
    sig = types.void(arr, idx)

    def codegen(context, builder, signature, args):
        ary = context.make_array(signature.args[0])(context, builder, args[0])
        ptr = cgutils.get_item_pointer(context, builder, signature.args[0], ary, [args[1]], wraparound=False)
        i8p = ir.IntType(8).as_pointer()
        i32 = ir.IntType(32)
        fnty = ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32])
        fn = cgutils.get_or_insert_function(builder.module, fnty, _PREFETCH_NAME)
        rw, locality, data_cache = ir.Constant(i32, 0), ir.Constant(i32, 3), ir.Constant(i32, 1)
        builder.call(fn, [builder.bitcast(ptr, i8p), rw, locality, data_cache])
        return context.get_dummy_value()
    return sig, codegen
