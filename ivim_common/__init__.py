"""ivim-toolbox: voxel-wise IVIM fitting and Monte Carlo design tools (successor of Lévy et al., MRM 2020).

The public API is :class:`IvimModel` and :class:`IvimFit` (see :mod:`ivim_common.api`)::

    from ivim_common import IvimModel
    fit = IvimModel(bvals).fit(data, mask)      # data (..., n_b) -> fit.S0, fit.D, fit.f, fit.Dstar

They are imported on first use, so that importing the package (as every script's ``--help``
does) does not import numpy.
"""
import contextlib
import os

__version__ = "1.0.0.dev0"
__all__ = ["IvimModel", "IvimFit", "__version__"]


def __getattr__(name):
    if name in ("IvimModel", "IvimFit"):
        from . import api
        return getattr(api, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

# The few matrix products here are tiny, so BLAS threads only add overhead (with OpenBLAS's
# default threads, the numpy engine that preceded the compiled one took 18.4 s instead of
# 12.0 s on a 10^5-voxel fit, 2 cores), and worker processes each running threads fight over
# the cores.  BLAS reads these when numpy loads.
BLAS_THREAD_VARIABLES = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def limit_blas_threads():
    """One BLAS thread in this process (a value the user set wins): the scripts call it first
    thing, before numpy is imported.  Importing the package changes nothing."""
    for var in BLAS_THREAD_VARIABLES:
        os.environ.setdefault(var, "1")


@contextlib.contextmanager
def blas_threads_limited():
    """:func:`limit_blas_threads` within the block only: for the worker processes started there."""
    added = [var for var in BLAS_THREAD_VARIABLES if var not in os.environ]
    limit_blas_threads()
    try:
        yield
    finally:
        for var in added:
            os.environ.pop(var, None)
