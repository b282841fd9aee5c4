"""The numba support every compiled kernel shares: how kernels are compiled and cached, the
notice shown while they compile, and the helpers they call (:func:`exp`).

The fast engine, the Bayesian engine and the trust maps' kernels (:mod:`ivim_common.kernels`)
are compiled with :func:`compile_kernel` (or :func:`kernel`), so they share one cache policy.
"""
import contextlib
import math
import sys
import threading

import numba
import numpy as np

# numba's option for code without its reference counting (its runtime, NRT), with which numba
# compiles its own hot helpers; should a numba lack it, the kernels compile with counting.
NO_NRT = {"_nrt": False} if hasattr(numba.core.options.DefaultOptions, "_nrt") else {}


def compile_kernel(func, allocates=True, **options):
    """``numba.njit(func, error_model="numpy", **options)``, cached on disk where numba finds a
    writable place (beside the package, else its user cache); without one, compiled again in
    each process.  No C-callable wrapper (nothing calls a kernel through a C pointer): numba
    would compile one for every kernel, some 0.03 s each on the first run.  A kernel that
    ``allocates`` nothing (nor calls one that does) is compiled without reference counting."""
    options = dict(options, error_model="numpy", no_cfunc_wrapper=True, **({} if allocates else NO_NRT))
    try:
        return numba.njit(cache=True, **options)(func)
    except RuntimeError:              # numba: "cannot cache ... as it uses ... no locator available"
        return numba.njit(**options)(func)


def kernel(func):
    """Compile without reference counting, for kernels that allocate nothing (their callers
    hand them their scratch): less code to compile, and the atomic count updates that their
    array arguments and views would cost dominate such short kernels."""
    return compile_kernel(func, allocates=False)


COMPILE_NOTICE_AFTER_S = 3.0


@contextlib.contextmanager
def notice_if_slow(enabled, notice):
    """Print ``notice`` on stderr if the block (a compilation) is still running after
    COMPILE_NOTICE_AFTER_S."""
    timer = threading.Timer(COMPILE_NOTICE_AFTER_S, print, args=(notice,), kwargs=dict(file=sys.stderr, flush=True))
    timer.daemon = True
    if enabled:
        timer.start()
    try:
        yield
    finally:
        timer.cancel()


_LOG2E = 1.4426950408889634
_LN2_HI, _LN2_LO = 6.93147180369123816490e-01, 1.90821492927058770002e-10   # ln 2 = hi + lo
_ROUND = 6755399441055744.0     # 1.5·2^52: adding it rounds to an integer, kept in the low bits
_C = tuple(1.0 / math.factorial(i) for i in range(14))    # Taylor coefficients of exp


@kernel
def exp(x):
    """exp(x), within 1 ulp of numpy.exp for |x| <= 708 (x is clamped there, so exp(-inf) is
    3.3e-308, not 0; NaN stays NaN),
    in a form that the compiler vectorises (np.exp is a call per element).  exp(x) = 2^n·exp(r), n = round(x / ln 2), |r| <= ln(2)/2, exp(r) by its Taylor
    polynomial of degree 13 (remainder below 1e-17)."""
    t = -708.0 if x < -708.0 else (708.0 if x > 708.0 else x)
    shifted = t * _LOG2E + _ROUND            # n in the low bits of its float64
    n = shifted - _ROUND
    r = (t - n * _LN2_HI) - n * _LN2_LO
    c = _C
    q = ((((((c[13] * r + c[12]) * r + c[11]) * r + c[10]) * r + c[9]) * r + c[8]) * r
         + c[7]) * r + c[6]
    q = (((((q * r + c[5]) * r + c[4]) * r + c[3]) * r + c[2]) * r + c[1]) * r + c[0]
    return q * np.int64((np.float64(shifted).view(np.int64) + 1023) << 52).view(np.float64)

