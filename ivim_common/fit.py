"""IVIM fitters: the lmfit reference (as the original toolbox) and the fast vectorised engine.

Both solve the same problem, voxel by voxel:

1. the shared initialisation (:func:`ivim_common.model.initial_estimate`);
2. a fit of all b-values within the nominal bounds (:func:`ivim_common.model.nominal_bounds`);
3. a refinement within ±5 % of the step-2 values (:func:`ivim_common.model.refinement_bounds`).

:func:`fit_voxels` is the entry point; it returns the maps as a dict of 1-D arrays.
"""
import numpy as np

from . import model

ENGINES = ("fast", "lmfit")
OUTPUT_NAMES = ("S0", "D", "Fivim", "Dstar", "FivimXDstar", "AIC", "R2", "exception")


def valid_voxels(signal):
    """True where every sample of a voxel is finite and positive (others are marked failed)."""
    signal = np.asarray(signal, dtype=float)
    with np.errstate(invalid="ignore"):
        return np.isfinite(signal).all(axis=1) & (signal > 0).all(axis=1)


def goodness_of_fit(bvals, signal, params, n_varied):
    """RSS, AIC (lmfit's n·ln(RSS/n) + 2k) and R² (on the signal) of parameters (n_voxels, 4)."""
    resid = model.ivim_signal(bvals, *params.T) - signal
    rss = np.einsum("ij,ij->i", resid, resid)
    n_b = signal.shape[1]
    with np.errstate(divide="ignore", invalid="ignore"):
        aic = n_b * np.log(rss / n_b) + 2 * n_varied
        tss = ((signal - signal.mean(axis=1, keepdims=True)) ** 2).sum(axis=1)
        r2 = 1.0 - rss / tss
    return rss, aic, r2


def voxel_seeds(seed, voxel_ids):
    """Two 32-bit seeds per voxel (step 2, refinement) from (seed, flat voxel index).

    They do not depend on chunking or worker count.
    """
    return np.array([np.random.SeedSequence([int(seed), int(i)]).generate_state(2)
                     for i in voxel_ids], dtype=np.uint32).reshape(-1, 2)


def _lmfit_minimize(bvals, signal, start, lo, hi, vary, seed):
    """Differential evolution of lmfit (as the original), one voxel. Returns the 4 parameters."""
    import lmfit

    params = lmfit.Parameters()
    for name, v, l, h, free in zip(model.PARAM_NAMES, start, lo, hi, vary):
        if free:
            params.add(name, value=v, min=l, max=h)
        else:  # lmfit refuses min == max
            params.add(name, value=v, vary=False)

    def residual(p):
        v = p.valuesdict()
        return model.ivim_signal(bvals, v["S0"], v["D"], v["Fivim"], v["Dstar"]) - signal

    result = lmfit.minimize(residual, params, method="differential_evolution", seed=int(seed))
    return np.array([result.params[name].value for name in model.PARAM_NAMES])


def fit_lmfit(bvals, signal, init, lo, hi, vary, seeds):
    """Reference fit: lmfit differential evolution, then the ±5 % refinement, voxel by voxel.

    Parameters
    ----------
    bvals : ndarray (n_b,); signal : ndarray (n_voxels, n_b)
    init, lo, hi : ndarray (n_voxels, 4), nominal start values and bounds
    vary : ndarray of bool (4,)
    seeds : ndarray (n_voxels, 2), see :func:`voxel_seeds`

    Returns
    -------
    params : ndarray (n_voxels, 4)
    """
    out = np.empty_like(init)
    for i in range(signal.shape[0]):
        step2 = _lmfit_minimize(bvals, signal[i], init[i], lo[i], hi[i], vary, seeds[i, 0])
        rlo, rhi = model.refinement_bounds(step2[None], vary)
        out[i] = _lmfit_minimize(bvals, signal[i], step2, rlo[0], rhi[0], vary, seeds[i, 1])
    return out


def fit_voxels(bvals, signal, approach="one-step", bounds_version="2020", engine="fast",
               seed=0, voxel_ids=None):
    """Fit the IVIM model to many voxels.

    Parameters
    ----------
    bvals : array_like (n_b,)
        b-values in s/mm².
    signal : array_like (n_voxels, n_b)
    approach : {'one-step', 'two-step'}
    bounds_version : {'2020', '2019'}
        One-step bounds (ignored by two-step).
    engine : {'fast', 'lmfit'}
    seed : int
        Seed of the lmfit engine's differential evolution (the fast engine draws nothing).
    voxel_ids : array_like of int (n_voxels,), optional
        Flat indices of the voxels in the volume, from which each voxel's seed derives
        (default ``arange(n_voxels)``).

    Returns
    -------
    dict of ndarray (n_voxels,)
        Keys of OUTPUT_NAMES.  Failed voxels (non-finite or non-positive signal) have NaN
        parameters and exception = 1.
    """
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r} (choose from {', '.join(ENGINES)})")
    bvals = np.asarray(bvals, dtype=float)
    signal = np.atleast_2d(np.asarray(signal, dtype=float))
    n = signal.shape[0]
    voxel_ids = np.arange(n) if voxel_ids is None else np.asarray(voxel_ids)
    cfg = model.settings(approach, bounds_version)

    ok = valid_voxels(signal)
    dinit, s0_1mf = model.initial_estimate(bvals, signal[ok], cfg["bval_threshold"])
    init, lo, hi, vary = model.nominal_bounds(approach, bounds_version, dinit, s0_1mf)
    if engine == "lmfit":
        params = fit_lmfit(bvals, signal[ok], init, lo, hi, vary, voxel_seeds(seed, voxel_ids[ok]))
    else:
        params = fit_fast(bvals, signal[ok], init, lo, hi, vary)

    out = {name: np.full(n, np.nan) for name in OUTPUT_NAMES}
    for j, name in enumerate(model.PARAM_NAMES):
        out[name][ok] = params[:, j]
    out["FivimXDstar"][ok] = params[:, 2] * params[:, 3]
    _, out["AIC"][ok], out["R2"][ok] = goodness_of_fit(bvals, signal[ok], params, int(vary.sum()))
    out["exception"] = np.where(ok, 0.0, 1.0)
    return out
