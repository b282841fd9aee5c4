"""Monte Carlo simulation of IVIM estimation error, and of the SNR a protocol needs.

What is simulated (as the original toolbox, Lévy et al. MRM 2020, with seeds):

* the true signal is :func:`ivim_common.model.ivim_signal` with S0 = 600 on a grid of
  (f, D*, D) values; a grid *cell* is one (f, D*, D) combination, flattened in C order
  (``cell = (iF * nDstar + iDstar) * nD + iD``);
* noise of SD σ = S0 / SNR (S0 = the true b = 0 signal, 600, even when b = 0 is not sampled):
  'gaussian' adds N(0, σ) to the signal (the original), 'rician' returns
  |S + N(0, σ) + i·N(0, σ)| (magnitude images, with their noise floor);
* every cell has its own standard-normal draws, from ``SeedSequence([seed, cell])``, scaled by
  σ at every SNR (common random numbers: the error of a cell is a smooth function of the SNR,
  and shards or workers do not change the draws);
* the error of a parameter p in {f, D*, D, f·D*} is, in %, 100·(p̂ − p)/p for each draw.
  Fits that fail (``exception`` = 1) are counted and left out of the statistics.

The results are plain arrays (see :data:`ARRAY_DESCRIPTIONS`) saved as ``.npz`` with a JSON
sidecar; no pickle.
"""
import datetime
import json
import os
import time
import warnings
from dataclasses import dataclass, field

import numpy as np

from . import engines, model
from .io.provenance import model_record
from .api import IvimModel
from .constants import (CONDITIONS, DEFAULT_MAX_ERROR, DEFAULT_N_DRAWS, DEFAULT_SNR_START, ERROR_PARAMETERS,
                        NOISE_MODELS, S0_TRUE, SIMULATION_CELL_ARRAYS as CELL_ARRAYS, SIMULATION_KINDS, SNR_CAP)
from .errors import InputError

ERR_ORDER = tuple(ERROR_PARAMETERS)
PERCENTILES = (5, 50, 95)

SNR_FLOOR = 1.0      # a cell passing at this SNR stops there
BISECT_ABS = 1.0     # the search stops when the bracket is within 1 SNR unit ...
BISECT_REL = 0.005   # ... or 0.5 % of its upper end
CHUNK_VOXELS = 200_000  # fits per batch: all the draws of many cells fitted together

NOISE_DESCRIPTION = {
    "gaussian": "S + N(0, sigma) (real-valued, additive, as the original toolbox)",
    "rician": "|S + N(0, sigma) + i*N(0, sigma)| (magnitude of complex Gaussian noise)",
}
SNR_DEFINITION = f"SNR = S0/sigma with S0 = {S0_TRUE:g}, the true signal at b = 0"
ERROR_DEFINITION = ("error of p in % = 100*(p_hat - p)/p per noise draw, p in (f, Dstar, D, f*Dstar); "
                    "failed fits are counted in n_failed and left out")
ARRAY_DESCRIPTIONS = {
    "kind": " | ".join(f"'{kind}'" for kind in SIMULATION_KINDS),
    "F_range": "true f values (rows of the grid)",
    "Dstar_range": "true D* values, mm^2/s",
    "D_range": "true D values, mm^2/s",
    "bvals": "b-values, s/mm^2",
    "err_order": "order of the first error axis: f, Dstar, D, fDstar",
    "mean_abs_err": "(4, nF, nDstar, nD) mean over the draws of |error| in %",
    "sd_abs_err": "(4, nF, nDstar, nD) SD (ddof 0) over the draws of |error| in %",
    "mean_signed_err": "(4, nF, nDstar, nD) mean signed error (bias) in %",
    "pct_signed_err": "(3, 4, nF, nDstar, nD) 5th/50th/95th percentiles of the signed error in %",
    "n_failed": "(nF, nDstar, nD) failed fits per cell (-1: cell not computed in this shard)",
    "n_noise_draws": "noise draws per cell",
    "snr": "SNR of the simulation",
    "min_snr": "(nF, nDstar, nD) required SNR; NaN: not reachable below the cap, or not in this shard",
    "mean_err_at_min_snr": "(4, nF, nDstar, nD) mean |error| in % at min_snr",
    "mean_pred_sd": ("(4, nF, nDstar, nD) mean over the draws of the SD each fit predicts (the *_sd map: "
                     "Fisher information, or the engine's posterior SD), in % of the true value; over the draws "
                     "where it is defined (no bound hit); NaN for fDstar (no SD map)"),
    "emp_sd": ("(4, nF, nDstar, nD) empirical SD (ddof 1) of the estimates over the same draws, in % of the "
               "true value"),
    "coverage_95": ("(4, nF, nDstar, nD) share of those draws with |error| <= 1.96*predicted SD (0.95 if the "
                    "SD is right and the errors Gaussian)"),
    "n_with_sd": "(4, nF, nDstar, nD) draws per cell where the fit gave an SD (fitted, no bound hit)",
    "shard": "[K, N]: this file holds shard K of N ([1, 1]: the whole grid)",
    "run_id": "id of the run, shared by its shards (--run-id, default $SLURM_ARRAY_JOB_ID); '' if none",
    "settings": "JSON of the settings that shards of one run share",
}
# Arrays with one value per grid cell in their last 3 axes: the ones shards fill in.
SD_ARRAYS = ("mean_pred_sd", "emp_sd", "coverage_95", "n_with_sd")


# ----------------------------------------------------------------------------------------------
# Grid, shards, noise

@dataclass(frozen=True)
class Simulation:
    """What is simulated and how it is fitted.

    Attributes
    ----------
    bvals : ndarray (n_b,), s/mm²
    F_range, Dstar_range, D_range : ndarray, true f, D* (mm²/s) and D (mm²/s) values
    approach : {'one-step', 'two-step'}
    bounds_version : {'2020', '2019'}
    engine : {'fast', 'lmfit'}
    seed : int
        Seed of the noise draws (and of the lmfit engine).
    n_draws : int
        Noise draws per grid cell.
    noise : {'gaussian', 'rician'}
    jobs : int
        Worker processes for the fits (1: in this process); the results do not depend on it.
    engine_options : dict, optional
        Options of the engine (e.g. ``{"prior": "empirical"}`` for 'bayes': estimated from each
        batch of fits).
    pool : ivim_common.voxelpool.WorkerPool, optional
        The run's worker processes, reused by every batch and SNR step (default: a pool per
        batch).
    dstar_convention : {'toolbox', 'osipi'}
        What ``Dstar_range`` and the D* errors are of: D* in excess of D, or D*p = D + D* (then
        every true D*p must exceed every true D).
    bval_threshold : float, optional
        b (s/mm²) of the initialisation's line (default: the approach's).
    """
    bvals: np.ndarray
    F_range: np.ndarray
    Dstar_range: np.ndarray
    D_range: np.ndarray
    approach: str = "one-step"
    bounds_version: str = "2020"
    engine: str = "fast"
    seed: int = 0
    n_draws: int = DEFAULT_N_DRAWS
    noise: str = "gaussian"
    jobs: int = 1
    engine_options: dict = None
    pool: object = field(default=None, compare=False, repr=False)
    dstar_convention: str = "toolbox"
    bval_threshold: float = None

    def __post_init__(self):
        model.settings(self.approach, self.bounds_version)  # validates both
        if self.dstar_convention not in model.DSTAR_CONVENTIONS:
            raise ValueError(f"unknown D* convention {self.dstar_convention!r}")
        if self.dstar_convention == "osipi" and np.min(self.Dstar_range) <= np.max(self.D_range):
            raise ValueError("Dstar_range: with the osipi convention, every D*p = D + D* must exceed every D")
        engines.get(self.engine)
        if self.noise not in NOISE_MODELS:
            raise ValueError(f"unknown noise model {self.noise!r}")
        if self.n_draws < 1:
            raise ValueError(f"n_draws: need at least 1 draw (got {self.n_draws})")

    @property
    def shape(self):
        return (len(self.F_range), len(self.Dstar_range), len(self.D_range))

    @property
    def n_cells(self):
        return int(np.prod(self.shape))

    def truth(self, cells):
        """True (f, D*, D, f·D*) of flat cell indices, shape (n_cells, 4) in ERR_ORDER."""
        i_f, i_ds, i_d = np.unravel_index(np.asarray(cells, dtype=int), self.shape)
        f, dstar, d = self.F_range[i_f], self.Dstar_range[i_ds], self.D_range[i_d]
        return np.stack([f, dstar, d, f * dstar], axis=-1)

    def signal(self, cells):
        """Noise-free signal of cells, shape (n_cells, n_b)."""
        f, dstar, d, _ = self.truth(cells).T
        return model.ivim_signal(self.bvals, S0_TRUE, d, f, model.excess_dstar(dstar, d, self.dstar_convention))

    def standard_draws(self, cells):
        """Standard-normal draws of cells: (n_components, n_cells, n_draws, n_b).

        One component for Gaussian noise, two (real, imaginary) for Rician; the first
        component is the same for both.  Seeded from (seed, cell) only.
        """
        n_comp = 2 if self.noise == "rician" else 1
        out = np.empty((n_comp, len(cells), self.n_draws, len(self.bvals)))
        for j, cell in enumerate(cells):
            rng = np.random.default_rng(np.random.SeedSequence([int(self.seed), int(cell)]))
            out[:, j] = rng.standard_normal((n_comp, self.n_draws, len(self.bvals)))
        return out

    def settings_json(self):
        """The settings that every shard of one run must share (compared when merging)."""
        settings = dict(approach=self.approach, bounds_version=self.bounds_version, engine=self.engine,
                        seed=self.seed, noise=self.noise, n_draws=self.n_draws,
                        dstar_convention=self.dstar_convention)
        if self.engine_options:
            settings["engine_options"] = self.engine_options
        if self.bval_threshold is not None:
            settings["bval_threshold"] = self.bval_threshold
        return json.dumps(settings, sort_keys=True)


def shard_cells(n_cells, k, n):
    """Flat cell indices of shard K of N: contiguous, deterministic, sizes differ by at most 1."""
    return np.array_split(np.arange(n_cells), n)[k - 1]


def add_noise(signal, draws, sigma, noise):
    """Noisy signal from standard-normal draws.

    Parameters
    ----------
    signal : ndarray (..., n_b)
    draws : ndarray (n_components, ..., n_b), see :meth:`Simulation.standard_draws`
    sigma : float or ndarray broadcastable to signal
    noise : {'gaussian', 'rician'}
    """
    real = signal + sigma * draws[0]
    if noise == "gaussian":
        return real
    return np.hypot(real, sigma * draws[1])


# ----------------------------------------------------------------------------------------------
# Fitting and error statistics

def _fit(sim, signal, voxel_ids):
    """Fit (n_voxels, n_b) -> estimates and their predicted SDs (n_voxels, 4) in ERR_ORDER, NaN
    where the fit failed (and SD NaN where the fit gives none, and for f·D*).

    The voxels are split over ``sim.jobs`` worker processes (ivim_common.voxelpool).
    """
    fitter = IvimModel(sim.bvals, sim.approach, sim.bounds_version, sim.engine, dstar_convention=sim.dstar_convention,
                       bval_threshold=sim.bval_threshold, **(sim.engine_options or {}))
    out = fitter.fit_voxels(signal, voxel_ids, jobs=sim.jobs, seed=sim.seed, pool=sim.pool)
    est = np.stack([out[ERROR_PARAMETERS[name]] for name in ERR_ORDER], axis=-1)
    est[out["exception"] != 0] = np.nan
    nan = np.full(len(est), np.nan)
    sd = np.stack([out.get(f"{ERROR_PARAMETERS[name]}_sd", nan) for name in ERR_ORDER], axis=-1)
    sd[out["exception"] != 0] = np.nan
    return est, sd


def signed_errors(sim, cells, snr=None, with_sd=False):
    """Signed % errors of every draw of cells: (n_cells, n_draws, 4), NaN for failed fits.

    ``snr`` (scalar or one value per cell) None means no noise: one fit per cell.  With
    ``with_sd``, also the SD each fit predicts, in % of the true value (same shape).
    """
    cells = np.asarray(cells, dtype=int)
    clean = sim.signal(cells)
    if snr is None:
        signal, n_draws = clean[:, None, :], 1
    else:
        sigma = S0_TRUE / np.broadcast_to(np.asarray(snr, dtype=float), cells.shape)[:, None, None]
        signal, n_draws = add_noise(clean[:, None, :], sim.standard_draws(cells), sigma, sim.noise), sim.n_draws
    voxel_ids = (cells[:, None] * n_draws + np.arange(n_draws)).ravel()
    est, sd = (a.reshape(len(cells), n_draws, 4) for a in _fit(sim, signal.reshape(-1, len(sim.bvals)), voxel_ids))
    truth = sim.truth(cells)[:, None, :]
    errors = 100.0 * (est - truth) / truth
    return (errors, 100.0 * sd / truth) if with_sd else errors


def _mask_failed(errors):
    """Errors (n_cells, n_draws, 4) with every value of a failed draw NaN, and the failed draws."""
    failed = np.isnan(errors).any(axis=2)
    return np.where(failed[..., None], np.nan, errors), failed


def error_statistics(errors, sd=None):
    """Per-cell statistics of signed % errors (n_cells, n_draws, 4), NaN = failed fit.

    With ``sd``, the SD each fit predicted (in % of the true value, like errors), also the
    statistics of :func:`sd_statistics`.

    Returns
    -------
    dict with mean_abs_err, sd_abs_err, mean_signed_err (n_cells, 4), pct_signed_err
    (3, n_cells, 4) for PERCENTILES, n_failed (n_cells,).  All-failed cells give NaN.
    """
    errors, failed = _mask_failed(errors)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN cells -> NaN, on purpose
        stats = dict(mean_abs_err=np.nanmean(np.abs(errors), axis=1),
                     sd_abs_err=np.nanstd(np.abs(errors), axis=1),
                     mean_signed_err=np.nanmean(errors, axis=1),
                     pct_signed_err=np.nanpercentile(errors, PERCENTILES, axis=1),
                     n_failed=failed.sum(axis=1))
    if sd is not None:
        stats.update(sd_statistics(errors, sd))
    return stats


def sd_statistics(errors, sd):
    """How well the predicted SDs describe the errors, per cell, over the draws with an SD.

    Parameters
    ----------
    errors, sd : ndarray (n_cells, n_draws, 4)
        Signed errors and predicted SDs, both in % of the true value; NaN where missing.

    Returns
    -------
    dict with mean_pred_sd, emp_sd (ddof 1), coverage_95 (share with |error| <= 1.96·SD) and
    n_with_sd, each (n_cells, 4).

    Examples
    --------
    >>> e = np.array([[[1.0], [-3.0], [2.0], [np.nan]]]).repeat(4, axis=2)
    >>> s = np.array([[[1.0], [1.0], [np.nan], [1.0]]]).repeat(4, axis=2)
    >>> out = sd_statistics(e, s)
    >>> out["coverage_95"][0, 0], out["n_with_sd"][0, 0], out["emp_sd"][0, 0]
    (np.float64(0.5), np.int64(2), np.float64(2.8284271247461903))
    """
    has = np.isfinite(sd) & np.isfinite(errors)
    e = np.where(has, errors, np.nan)
    with warnings.catch_warnings(), np.errstate(invalid="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        n = has.sum(axis=1)
        return dict(mean_pred_sd=np.nanmean(np.where(has, sd, np.nan), axis=1),
                    emp_sd=np.where(n > 1, np.nanstd(e, axis=1, ddof=1), np.nan),
                    coverage_95=np.where(n > 0, (has & (np.abs(errors) <= 1.96 * sd)).sum(axis=1) / n, np.nan),
                    n_with_sd=n)


def mean_abs_error(errors, sd=None):
    """Only the mean |error| of :func:`error_statistics` (what the required-SNR search needs)."""
    errors, _ = _mask_failed(errors)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return dict(mean_abs_err=np.nanmean(np.abs(errors), axis=1))


def compute_errors(sim, cells, snr=None, progress=None, summary=error_statistics):
    """Error statistics of cells, without noise (``snr`` None) or at an SNR (one, or one per cell).

    Cells are fitted in batches of at most CHUNK_VOXELS fits (at least one cell), which bounds
    the memory.  ``summary`` turns the signed
    errors of a chunk into per-cell arrays (:func:`error_statistics` or :func:`mean_abs_error`).
    ``progress(n)`` is called as cells finish.  Returns the dict of ``summary``, cells in order.
    """
    cells = np.asarray(cells, dtype=int)
    if snr is not None:
        snr = np.broadcast_to(np.asarray(snr, dtype=float), cells.shape)
    per_cell = 1 if snr is None else sim.n_draws
    n_chunks = max(1, -(-len(cells) * per_cell // CHUNK_VOXELS))
    parts = []
    for idx in np.array_split(np.arange(len(cells)), n_chunks):
        if snr is None or summary is not error_statistics:
            parts.append(summary(signed_errors(sim, cells[idx], None if snr is None else snr[idx])))
        else:
            parts.append(summary(*signed_errors(sim, cells[idx], snr[idx], with_sd=True)))
        if progress:
            progress(len(idx))
    # per-cell arrays have the cell axis first, except the percentiles (3, n_cells, 4)
    return {name: np.concatenate([p[name] for p in parts], axis=1 if name == "pct_signed_err" else 0)
            for name in parts[0]}


def condition_holds(mean_abs_err, condition, max_error):
    """True where the condition holds: 'FDstar' err(f·D*) <= max, 'all' every error <= max,
    'f', 'Dstar' or 'D' that error <= max.

    NaN errors (every fit failed) never pass.
    """
    err = np.asarray(mean_abs_err)
    with np.errstate(invalid="ignore"):
        if condition == "FDstar":
            return err[..., 3] <= max_error
        if condition == "all":
            return np.all(err <= max_error, axis=-1)
        if condition in ERR_ORDER[:3]:    # one parameter alone (ivim_simu_optimize_bvals.py)
            return err[..., ERR_ORDER.index(condition)] <= max_error
    raise ValueError(f"unknown condition {condition!r} (choose from {', '.join(CONDITIONS)})")


def required_snr(sim, cells, condition="FDstar", max_error=DEFAULT_MAX_ERROR,
                 snr_start=DEFAULT_SNR_START, progress=None):
    """Smallest SNR at which the condition holds, per cell (common random numbers).

    From ``snr_start``: ×3 while failing, ÷2 while passing, then bisection until the bracket
    [failing, passing] is within 1 SNR unit or 0.5 % of its upper end.  All still-active cells
    are fitted together at every step.  A cell that fails at SNR_CAP is not reachable (NaN); one
    that passes at SNR_FLOOR stops there.

    Returns
    -------
    dict
        ``min_snr`` (n_cells,) upper end of the final bracket (NaN: not reachable);
        ``mean_err_at_min_snr`` (n_cells, 4) mean |error| in % there; ``bracket_low`` (n_cells,)
        the largest SNR found failing (0 if none); ``n_steps`` the number of search steps.
    """
    if not 0 < snr_start <= SNR_CAP:
        raise ValueError(f"snr_start: the starting SNR must be in (0, {SNR_CAP:g}] (got {snr_start:g})")
    cells = np.asarray(cells, dtype=int)
    n = len(cells)
    passing = np.full(n, np.inf)       # smallest SNR found passing
    failing = np.zeros(n)              # largest SNR found failing
    err_pass = np.full((n, 4), np.nan)
    snr = np.full(n, float(snr_start))
    active = np.ones(n, dtype=bool)
    result = np.full(n, np.nan)
    n_steps = 0
    while active.any():
        idx = np.flatnonzero(active)
        err = compute_errors(sim, cells[idx], snr[idx], summary=mean_abs_error)["mean_abs_err"]
        ok = condition_holds(err, condition, max_error)
        passing[idx[ok]] = snr[idx[ok]]
        err_pass[idx[ok]] = err[ok]
        failing[idx[~ok]] = snr[idx[~ok]]
        n_steps += 1

        lo, hi = failing[idx], passing[idx]
        unreachable = np.isinf(hi) & (lo >= SNR_CAP)
        converged = np.isfinite(hi) & ((hi <= SNR_FLOOR) |
                                       ((lo > 0) & (hi - lo <= np.maximum(BISECT_ABS, BISECT_REL * hi))))
        result[idx[converged]] = hi[converged]
        snr[idx] = np.where(np.isinf(hi), np.minimum(3.0 * lo, SNR_CAP),
                            np.where(lo == 0, np.maximum(0.5 * hi, SNR_FLOOR), 0.5 * (lo + hi)))
        done = unreachable | converged
        active[idx[done]] = False
        if progress and done.any():
            progress(int(done.sum()))
    err_pass[np.isnan(result)] = np.nan
    return dict(min_snr=result, mean_err_at_min_snr=err_pass, bracket_low=failing, n_steps=n_steps)


# ----------------------------------------------------------------------------------------------
# Result arrays: building, merging, saving, loading

def grid_arrays(sim, kind, shard):
    """The arrays every result file of a grid holds: its kind, the grid, the b-values, the
    order of the errors and the shard."""
    return dict(kind=np.array(kind), F_range=sim.F_range, Dstar_range=sim.Dstar_range,
                D_range=sim.D_range, bvals=sim.bvals, err_order=np.array(ERR_ORDER),
                shard=np.array(shard, dtype=np.int64))


def to_grid(sim, cells, values, fill):
    """Per-cell values (n_cells, *lead) -> grid array (*lead, nF, nDstar, nD), fill elsewhere."""
    values = np.moveaxis(np.asarray(values), 0, -1)
    full = np.full(values.shape[:-1] + (sim.n_cells,), fill, dtype=values.dtype)
    full[..., cells] = values
    return full.reshape(values.shape[:-1] + sim.shape)


def run_errors(sim, snr=None, shard=(1, 1), progress=None):
    """Error arrays of the grid (shard K/N of it): kind 'error_nonoise' (snr None) or 'error_noise'."""
    cells = shard_cells(sim.n_cells, *shard)
    stats = compute_errors(sim, cells, snr, progress)
    kind = "error_nonoise" if snr is None else "error_noise"
    arrays = grid_arrays(sim, kind, shard)
    arrays["mean_abs_err"] = to_grid(sim, cells, stats["mean_abs_err"], np.nan)
    if snr is not None:
        arrays["sd_abs_err"] = to_grid(sim, cells, stats["sd_abs_err"], np.nan)
        arrays["mean_signed_err"] = to_grid(sim, cells, stats["mean_signed_err"], np.nan)
        arrays["pct_signed_err"] = to_grid(sim, cells, np.moveaxis(stats["pct_signed_err"], 1, 0), np.nan)
        arrays["n_failed"] = to_grid(sim, cells, stats["n_failed"].astype(np.int64), -1)
        for name in SD_ARRAYS:
            values = stats[name].astype(np.int64) if name == "n_with_sd" else stats[name]
            arrays[name] = to_grid(sim, cells, values, -1 if name == "n_with_sd" else np.nan)
        arrays["n_noise_draws"] = np.array(sim.n_draws)
        arrays["snr"] = np.array(float(snr))
    arrays["settings"] = np.array(settings_text(sim, snr=snr))
    return arrays


def run_required_snr(sim, condition="FDstar", max_error=DEFAULT_MAX_ERROR,
                     snr_start=DEFAULT_SNR_START, shard=(1, 1), progress=None):
    """Required-SNR arrays of the grid (shard K/N of it), kind 'required_snr'."""
    cells = shard_cells(sim.n_cells, *shard)
    res = required_snr(sim, cells, condition, max_error, snr_start, progress)
    arrays = grid_arrays(sim, "required_snr", shard)
    arrays["min_snr"] = to_grid(sim, cells, res["min_snr"], np.nan)
    arrays["mean_err_at_min_snr"] = to_grid(sim, cells, res["mean_err_at_min_snr"], np.nan)
    arrays["n_noise_draws"] = np.array(sim.n_draws)
    arrays["settings"] = np.array(settings_text(sim, condition=condition, max_error=float(max_error),
                                            snr_start=float(snr_start)))
    return arrays


def settings_text(sim, **extra):
    """The settings of ``sim`` and ``extra`` as the JSON text a result file stores."""
    settings = json.loads(sim.settings_json())
    settings.update(extra)
    return json.dumps(settings, sort_keys=True)


def merge_results(results, names=None):
    """Merge the shard files of one run into one complete result.

    Parameters
    ----------
    results : list of dict
        Arrays from :func:`ivim_common.io.load_results`, shards K/N of one run (one complete file also works).
    names : list of str, optional
        File names, for the messages.

    Raises
    ------
    InputError
        If the files are not shards of the same run, or a shard is missing or repeated.
    """
    names = names or [f"input {i + 1}" for i in range(len(results))]
    first = results[0]
    same = ("kind", "F_range", "Dstar_range", "D_range", "bvals", "settings", "n_noise_draws", "snr")
    for arrays, name in zip(results[1:], names[1:]):
        for key in same:
            if (key in first) != (key in arrays) or (key in first and not np.array_equal(first[key], arrays[key])):
                raise InputError(f"{name}: not a shard of the same run as {names[0]} ('{key}' differs)")
    n_shards = int(first["shard"][1])
    seen = {}
    for arrays, name in zip(results, names):
        k, n = (int(v) for v in arrays["shard"])
        if n != n_shards:
            raise InputError(f"{name}: shard {k}/{n} does not belong with {names[0]} (N = {n_shards})")
        if k in seen:
            if n == 1:
                raise InputError(f"{name} and {seen[k]} are two complete runs, not shards of one: "
                                 "give one of them")
            raise InputError(f"{name}: shard {k}/{n} given twice (also {seen[k]}): "
                             + _which_run_hint(results, names, n))
        seen[k] = name
    missing = sorted(set(range(1, n_shards + 1)) - set(seen))
    if missing:
        raise InputError(f"shard(s) {', '.join(map(str, missing))} of {n_shards} missing "
                         f"(given: {', '.join(names)})")
    merged = dict(first)
    n_cells = int(np.prod([len(first[r]) for r in ("F_range", "Dstar_range", "D_range")]))
    for name in CELL_ARRAYS:
        if name not in first:
            continue
        flat = first[name].reshape(first[name].shape[:-3] + (n_cells,)).copy()
        for arrays in results:
            cells = shard_cells(n_cells, *(int(v) for v in arrays["shard"]))
            flat[..., cells] = arrays[name].reshape(flat.shape)[..., cells]
        merged[name] = flat.reshape(first[name].shape)
    merged["shard"] = np.array([1, 1], dtype=np.int64)
    return merged


def _which_run_hint(results, names, n_shards):
    """What to do when the inputs hold the files of several runs (a rerun into one folder)."""
    ids = sorted({str(arrays.get("run_id", "")) for arrays in results} - {""})
    folder = os.path.dirname(names[0]) or "."
    if len(ids) > 1:
        return (f"the inputs hold several runs (run ids {', '.join(ids)}); give the files of one, e.g. "
                f"-input {os.path.join(folder, f'sim_results_*_run{ids[-1]}_shard*of{n_shards}.npz')}")
    return ("the inputs hold the files of several runs; give the files of one (see their dates in the "
            "names and sidecars), or give each run a --run-id")


def result_path(ofolder, shard=(1, 1), now=None, run_id=""):
    """``<ofolder>/sim_results_<yymmddHHMMSS>[_run<ID>][_shard<K>of<N>].npz``.

    The run id (shared by the shards of one run, e.g. a SLURM array's job id) lets the files of
    one run be told from those of a rerun into the same folder.
    """
    stamp = (now or datetime.datetime.now()).strftime("%y%m%d%H%M%S")
    run = f"_run{run_id}" if run_id else ""
    tail = "" if tuple(shard) == (1, 1) else f"_shard{shard[0]}of{shard[1]}"
    return os.path.join(ofolder, f"sim_results_{stamp}{run}{tail}.npz")


def sidecar_path(npz_path):
    return os.path.splitext(npz_path)[0] + ".json"


def sidecar(arrays, provenance, sim=None, run_time_s=None, extra=None):
    """JSON-ready description of a result: provenance (tool, version, command, cwd, date, from
    ivim_common.io.provenance), settings, model, grid, noise, and what each array holds."""
    settings = json.loads(str(arrays["settings"]))
    search = SIMULATION_KINDS[str(arrays["kind"])].snr == "start"
    noisy = SIMULATION_KINDS[str(arrays["kind"])].snr is not None
    doc = {
        **provenance,
        "kind": str(arrays["kind"]),
        **model_record(settings["approach"], settings["bounds_version"], None, settings.get("dstar_convention", "toolbox"),
                          settings.get("bval_threshold")),
        "engine": settings["engine"],
        "seed": settings["seed"],
        "jobs": sim.jobs if sim else None,
        "S0_true": S0_TRUE,
        "noise": settings["noise"] if noisy else None,
        "noise_definition": NOISE_DESCRIPTION[settings["noise"]] if noisy else None,
        "snr_definition": SNR_DEFINITION,
        "error_definition": ERROR_DEFINITION,
        "settings": settings,
        "grid": {"F_range": arrays["F_range"].tolist(), "Dstar_range": arrays["Dstar_range"].tolist(),
                 "D_range": arrays["D_range"].tolist(),
                 "cell_index": "(iF*nDstar + iDstar)*nD + iD"},
        "bvals": arrays["bvals"].tolist(),
        "shard": arrays["shard"].tolist(),
        "arrays": {name: ARRAY_DESCRIPTIONS[name] for name in arrays},
        "run_time_s": None if run_time_s is None else round(run_time_s, 3),
    }
    if search:
        doc["search"] = {"condition": settings["condition"], "max_error_percent": settings["max_error"],
                         "snr_start": settings["snr_start"], "snr_cap": SNR_CAP, "snr_floor": SNR_FLOOR,
                         "rule": ("x3 while failing, /2 while passing, then bisection until the bracket "
                                  f"is within {BISECT_ABS:g} SNR unit or {100 * BISECT_REL:g} %; "
                                  "min_snr = upper end (condition holds); NaN = fails at the cap")}
    if extra:
        doc.update(extra)
    return doc


def timer():
    """Seconds since the call, as a function (for run_time_s)."""
    t0 = time.perf_counter()
    return lambda: time.perf_counter() - t0


def directional_signal(bvals, bvecs, S0, D_diag, Fivim, Dstar):
    """Signal of IVIM with an anisotropic diffusion and an isotropic perfusion, per volume:
    ``S0·exp(-b·gᵀ·diag(D_diag)·g)·(f·exp(-b·D*) + 1 - f)`` (g the unit gradient direction;
    D* in excess of D, as :func:`ivim_common.model.ivim_signal`).

    Parameters
    ----------
    bvals : array_like (n_b,); bvecs : array_like (3, n_b), unit vectors (any at b = 0)
    S0, Fivim, Dstar : float or array_like (...); D_diag : array_like (..., 3), mm²/s

    Returns
    -------
    ndarray (..., n_b)
    """
    b = np.asarray(bvals, dtype=float)
    g = np.asarray(bvecs, dtype=float)
    d_of_volume = np.asarray(D_diag, dtype=float) @ (g ** 2)          # (..., n_b)
    S0, Fivim, Dstar = (np.asarray(p, dtype=float)[..., None] for p in (S0, Fivim, Dstar))
    return S0 * np.exp(-b * d_of_volume) * (Fivim * np.exp(-b * Dstar) + 1.0 - Fivim)
