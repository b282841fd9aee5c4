"""The fitting engines, one module each, found through :data:`ENGINES`.

Every engine module has the same three names:

``CHUNK_SIZE``
    Voxels per chunk of work by default (a chunk should take about a second or more).
``prepare(announce=True)``
    Make the engine ready in this process (compile or load compiled code), once; worker
    processes started afterwards find it ready to load.
``fit(bvals, signal, init, lo, hi, vary, seeds, limits=None)``
    Fit the model to finite, positive signal (n_voxels, n_b) with per-voxel start values and
    nominal bounds ``init, lo, hi`` (n_voxels, 4, in the order of
    :data:`ivim_common.model.PARAM_NAMES`), ``vary`` (4,) the free parameters and ``seeds``
    (n_voxels, 2) per-voxel seeds (see :func:`ivim_common.api.voxel_seeds`); ``limits`` (None
    or a dict) goes to :func:`ivim_common.model.refinement_bounds`, which keeps the results of
    the 'osipi' preset and of the user's bounds inside them.  Returns a dict with ``params``
    (n_voxels, 4), NaN rows where the fit failed.

A new engine is one module here and one entry in :data:`ENGINES`; the scripts' ``--engine``
choices and help come from this table.  Only the standard library is imported here, so
``--help`` stays instant.
"""
import importlib

# name: (module, one line for --help)
ENGINES = {
    "fast": ("fast", "compiled grid + Newton solver of the toolbox's least squares (default; "
                     "the first run of an installation compiles it, some 15 s)"),
    "lmfit": ("lmfit_reference", "the original's lmfit differential evolution, the reference "
                                 "(about 1-2 s of CPU per voxel)"),
}


def get(name):
    """The engine module called ``name``."""
    if name not in ENGINES:
        raise ValueError(f"unknown engine {name!r} (choose from {', '.join(ENGINES)})")
    return importlib.import_module(f"{__name__}.{ENGINES[name][0]}")


def help_text():
    """'name: what it is; ...' of every engine, for --help."""
    return "; ".join(f"{name}: {text}" for name, (_, text) in ENGINES.items())
