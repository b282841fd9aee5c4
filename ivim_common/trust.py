"""How far to trust each fit: the Fisher SD, the mono-exponential rival, the residual bootstrap,
and the maps made of them (:func:`trust_maps`).

The loops run as compiled kernels (:mod:`ivim_common.kernels`); :func:`prepare` compiles or
loads them.  This room uses the model and the kernels; the API calls it, and hands the bootstrap
its own fit (``refit``), so nothing here imports the API.
"""
import warnings

import numpy as np

from . import kernels, model
from .compiled import notice_if_slow

MAX_VARIANCE_INFLATION = 1e12   # beyond, the free parameters are taken as not identifiable (NaN SD)
COMPILE_NOTICE = ("ivim-toolbox: compiling the trust maps' kernels, some 1 s (the first run of an "
                  "installation; it is cached for later runs where it can be written)")


def fisher_sd(bvals, params, rss, free, n_varied):
    """Standard deviations of the parameters from the Fisher information at the fitted point.

    cov = σ̂²·(JᵀJ)⁻¹ over the parameters in ``free``, with J = :func:`ivim_common.model.ivim_jacobian` at
    ``params`` and σ̂² = RSS/(n_b − n_varied): the asymptotic standard errors that lmfit reports
    (``stderr``) for an unconstrained least-squares fit.  Parameters not in ``free`` (fixed, at
    a bound, or undetermined, as D* where f is at 0) are held at their value: their SD is NaN,
    and the others' SD is conditional on them.  Where the free parameters are not identifiable
    (a variance inflation factor, diagonal of the inverse of JᵀJ scaled to a unit diagonal,
    above 1e12, or JᵀJ exactly singular) or n_b <= n_varied, every SD is NaN.  Compiled,
    voxel by voxel (:mod:`ivim_common.kernels`).

    Parameters
    ----------
    bvals : array_like, shape (n_b,)
    params : ndarray, shape (n_voxels, 4)
    rss : ndarray, shape (n_voxels,)
    free : ndarray of bool, shape (n_voxels, 4)
    n_varied : int
        Free parameters of the fit (the k of σ̂²'s n − k, as lmfit's nfree).

    Returns
    -------
    sd : ndarray, shape (n_voxels, 4), in the units of the parameters.
    sd_pool : ndarray, shape (n_voxels,)
        SD of D*p = D + D* (mm²/s), from the covariance of D and D* (D* alone where D is held);
        NaN where D* is not free.
    """
    b, params, rss = (np.ascontiguousarray(a, dtype=float) for a in (np.atleast_1d(bvals), params, rss))
    free = np.ascontiguousarray(free, dtype=np.bool_)
    sd, sd_pool = np.empty((len(params), 4)), np.empty(len(params))
    kernels.fisher_sd(b, params, rss, free, n_varied, MAX_VARIANCE_INFLATION, sd, sd_pool,
                      np.empty(b.size), np.empty(b.size), np.empty((4, 4)), np.empty((4, 4)),
                      np.empty(4), np.empty(4, dtype=np.bool_))
    return sd, sd_pool


def fit_mono(bvals, signal, max_iter=50, rtol=1e-10):
    """Least-squares fit of the mono-exponential S0·exp(−b·ADC), voxel by voxel (compiled:
    :mod:`ivim_common.kernels`).

    Start: the log-linear line weighted by S² (close to the least-squares one); then
    Levenberg-Marquardt steps on (S0, ADC), ADC >= 0, until the RSS changes by less than
    ``rtol`` (relative) in every voxel.

    Parameters
    ----------
    bvals : array_like, shape (n_b,)
    signal : ndarray, shape (n_voxels, n_b), finite and positive

    Returns
    -------
    s0, adc, rss : ndarray, shape (n_voxels,)  (ADC in mm²/s)

    Examples
    --------
    >>> b = np.array([0, 50, 200, 400, 800])
    >>> s0, adc, rss = fit_mono(b, 700 * np.exp(-b * 1.1e-3)[None] + [[1, -1, 1, -1, 1]])
    >>> print(f"{s0[0]:.1f} {adc[0]:.4e}")
    700.1 1.0990e-03
    """
    b = np.ascontiguousarray(bvals, dtype=float)
    y = np.ascontiguousarray(np.atleast_2d(signal), dtype=float)
    s0, adc, rss = (np.empty(len(y)) for _ in range(3))
    kernels.fit_mono(b, y, max_iter, rtol, s0, adc, rss, np.empty(b.size), np.empty(b.size))
    return s0, adc, rss


def trust_maps(bvals, signal, params, rss, lo, hi, vary, k, criterion="aicc", with_sd=True, pool=None):
    """How far to trust each fit: the maps of the fitted voxels (the rows of ``signal``).

    ``<param>_sd`` (with ``with_sd``) from :func:`fisher_sd`, with the
    parameters at a bound of their nominal box, and D* where f is at 0, held (NaN);
    ``bounds_hit`` (:func:`ivim_common.model.bounds_hit`); ``ADC`` and ``AICc_mono`` of the
    mono-exponential fit of the same signal, ``AICc`` of the IVIM fit and ``model_choice`` (1
    where IVIM has the lower ``criterion``, 'aicc' or 'bic', 0 where the mono-exponential
    has; NaN where a criterion is undefined); ``RMSE`` = sqrt(RSS/n_b).

    Parameters
    ----------
    bvals : ndarray (n_b,)
    signal, params : ndarray (n, n_b), (n, 4)
    rss : ndarray (n,)
        Residual sum of squares of params.
    lo, hi : ndarray (n, 4)
        The nominal (step-2) bounds.
    vary : ndarray of bool (4,)
    k : int
        Parameters estimated from the data (:func:`ivim_common.model.n_free`).
    pool : (float, float), optional
        Bounds of D*p = D + D* where D*'s are set on it (see :func:`ivim_common.model.bounds_hit`).
    """
    n_b = signal.shape[1]
    flags, at_lo, at_hi = model.bounds_hit(params, lo, hi, vary, pool)
    out = {"bounds_hit": flags.astype(float), "RMSE": np.sqrt(rss / n_b)}
    if with_sd:
        free = vary & ~at_lo & ~at_hi
        free[:, 3] &= ~at_lo[:, 2]               # f at 0: the signal does not depend on D*
        sd, out["Dstar_pool_sd"] = fisher_sd(bvals, params, rss, free, k)
        for name, values in zip(model.PARAM_NAMES, sd.T):
            out[f"{name}_sd"] = values
    _, out["ADC"], rss_mono = fit_mono(bvals, signal)
    out["AICc"], bic = model.information_criteria(rss, n_b, k)
    out["AICc_mono"], bic_mono = model.information_criteria(rss_mono, n_b, 2)
    ivim, mono = (out["AICc"], out["AICc_mono"]) if criterion == "aicc" else (bic, bic_mono)
    out["model_choice"] = np.where(np.isnan(ivim) | np.isnan(mono), np.nan, (ivim < mono).astype(float))
    return out


BOOTSTRAP_BATCH = 100_000     # refits per batch (memory: a batch's signal is this x n_b floats)


def bootstrap_uncertainty(bvals, signal, params, voxel_ids, n_boot, seed, n_varied, refit,
                          dstar_convention="toolbox"):
    """Residual bootstrap: SD and 2.5/97.5 % percentiles of each parameter over ``n_boot`` refits.

    Each refit fits, with ``refit(signal, voxel_ids=...)`` (the fit's own engine and steps,
    returning maps as :func:`ivim_common.api.fit_voxels`; D* in ``dstar_convention``), the
    fitted signal plus the voxel's residuals, centred and scaled by sqrt(n_b/(n_b − k)), drawn with
    replacement.  The draws of a voxel come from ``SeedSequence([seed, voxel_id, 1])``, so
    they do not depend on chunks or workers; so do the refits' own seeds (for engines that
    draw).  Refits that fail are left out; fewer than half left gives NaN.

    Returns
    -------
    dict of ndarray (n,): ``<param>_sd``, ``<param>_ci_low``, ``<param>_ci_high``
    """
    n, n_b = signal.shape
    fitted = model.ivim_signal(bvals, *params.T)
    resid = signal - fitted
    resid = (resid - resid.mean(axis=1, keepdims=True)) * np.sqrt(n_b / max(n_b - n_varied, 1))
    estimates = np.empty((n, n_boot, 4))
    per_batch = max(1, BOOTSTRAP_BATCH // n_boot)
    for start in range(0, n, per_batch):
        rows = np.arange(start, min(start + per_batch, n))
        draws, ids = [], []
        for i in rows:
            rng = np.random.default_rng(np.random.SeedSequence([int(seed), int(voxel_ids[i]), 1]))
            draws.append(rng.integers(0, n_b, (n_boot, n_b)))
            ids.append(rng.integers(0, 2 ** 62, n_boot))
        draws = np.array(draws)                                                  # (rows, n_boot, n_b)
        samples = fitted[rows, None, :] + np.take_along_axis(resid[rows, None, :], draws, axis=2)
        maps = refit(samples.reshape(-1, n_b), voxel_ids=np.concatenate(ids))
        maps["Dstar"] = model.excess_dstar(maps["Dstar"], maps["D"], dstar_convention)
        estimates[rows] = np.stack([maps[p] for p in model.PARAM_NAMES], axis=-1).reshape(len(rows), n_boot, 4)
    enough = np.isfinite(estimates).all(axis=2).sum(axis=1) >= 0.5 * n_boot
    estimates = np.concatenate([estimates, estimates[:, :, 1:2] + estimates[:, :, 3:4]], axis=2)   # D*p too
    out = {}
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)                          # all-NaN voxels
        sd = np.nanstd(estimates, axis=1, ddof=1)
        low, high = np.nanpercentile(estimates, [2.5, 97.5], axis=1)
    for j, name in enumerate(model.PARAM_NAMES + ("Dstar_pool",)):
        for kind, values in (("sd", sd), ("ci_low", low), ("ci_high", high)):
            out[f"{name}_{kind}"] = np.where(enough, values[:, j], np.nan)
    return out


UNCERTAINTY_METHODS = {
    "fisher": ("SD from the Fisher information at the fitted point, sqrt(diag(sigma^2 (J'J)^-1)) with "
               "sigma^2 = RSS/(n - k) (lmfit's stderr), J the model's Jacobian; NaN for a parameter within 0.1 % "
               "of a bound of its nominal box (bounds_hit_map), for D* where f is at 0, and for a fixed D"),
    "posterior": "posterior SD and 2.5/97.5 % posterior quantiles of the Bayesian engine",
    "bootstrap": ("residual bootstrap: refits, with the same engine and steps, of the fitted signal plus the "
                  "voxel's residuals (centred, scaled by sqrt(n/(n - k))) drawn with replacement, seeded per "
                  "voxel from the seed; SD (ddof 1) and 2.5/97.5 % percentiles of the refits (NaN when fewer "
                  "than half of them succeed)"),
}


_ready = False      # compiled or loaded in this process
HELPER_TASKS = ("prepare",)    # a helper process compiles them all on the first run


def prepare(announce=True, helper=None):
    """Compile the trust maps' kernels (the first run of an installation, some 1 s) or load
    them from numba's cache, once per process: :class:`ivim_common.IvimModel` calls it, as the
    engine's ``prepare``, before its workers start; with a ``helper`` compiling them (see
    :func:`ivim_common.compiled.prepare`), once it has."""
    global _ready
    if _ready:
        return
    if helper:
        helper.wait(f"{__name__}:prepare")
    b = np.array([0.0, 400.0, 800.0])
    params = np.array([[1000.0, 1e-3, 0.1, 20e-3]])
    with notice_if_slow(announce, COMPILE_NOTICE):
        fit_mono(b, model.ivim_signal(b, *params.T))
        fisher_sd(b, params, np.ones(1), np.ones((1, 4), dtype=bool), 2)
    _ready = True
