"""The reference engine: lmfit's differential evolution, voxel by voxel, as the original toolbox.

Step 2 searches the nominal box, step 3 the box of :func:`ivim_common.model.refinement_bounds`
around the step-2 result, each with a differential evolution seeded per voxel; where the
refined f is 0, D* is settled by :func:`ivim_common.model.settle_undetermined_dstar`, as in
the fast engine.
"""
import numpy as np

from .. import model

CHUNK_SIZE = 20     # voxels: tens of seconds of work, which keeps progress and Ctrl-C prompt
RANDOM = True       # its differential evolution draws: it takes per-voxel seeds


def prepare(announce=True, helper=None):
    """Nothing to prepare (lmfit is imported with the first fit)."""


def _minimize(bvals, signal, start, lo, hi, vary, seed):
    """Differential evolution of lmfit (as the original), one voxel. Returns the 4 parameters."""
    import lmfit

    params = lmfit.Parameters()
    for name, v, l, h, free in zip(model.PARAM_NAMES, start, lo, hi, vary):
        if free and h > l:
            params.add(name, value=v, min=l, max=h)
        else:  # lmfit refuses min == max (a box the user's bounds closed, too)
            params.add(name, value=l, vary=False)

    def residual(p):
        v = p.valuesdict()
        return model.ivim_signal(bvals, v["S0"], v["D"], v["Fivim"], v["Dstar"]) - signal

    result = lmfit.minimize(residual, params, method="differential_evolution", seed=int(seed))
    return np.array([result.params[name].value for name in model.PARAM_NAMES])


def fit(bvals, signal, init, lo, hi, vary, seeds, limits=None):
    """The engine's entry point (see :mod:`ivim_common.engines`): step 2 with seeds[:, 0],
    step 3 with seeds[:, 1]; ``limits``: see :func:`ivim_common.model.refinement_limits`."""
    params = np.empty_like(init)
    for i in range(signal.shape[0]):
        step2 = _minimize(bvals, signal[i], init[i], lo[i], hi[i], vary, seeds[i, 0])
        r_lo, r_hi = model.refinement_bounds(step2[None], vary, lo[i:i + 1], hi[i:i + 1], limits)
        params[i] = _minimize(bvals, signal[i], step2, r_lo[0], r_hi[0], vary, seeds[i, 1])
        model.settle_undetermined_dstar(params[i:i + 1], r_lo, r_hi)
    return {"params": params}
