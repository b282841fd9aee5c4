"""Protocol design: the Cramér-Rao bound of the IVIM model, and b-values chosen for a tissue range.

Computes only (no flags, no files); ``ivim_simu_optimize_bvals.py`` and
``ivim_simu_compute_required_snr.py --method crlb`` call it.

The bound.  With Gaussian noise of SD σ on every volume, the Fisher information of
θ = (S0, D, f, D*) (the order of :data:`ivim_common.model.PARAM_NAMES`) is F = Jᵀ·J / σ², J the
Jacobian of :func:`ivim_common.model.ivim_signal` (one row per volume, so a repeated b-value counts
once per volume).  one-step fits all four, so the covariance of an unbiased estimator is at least
F⁻¹.  two-step fixes D at the log-linear fit of ln S on b >= 500 s/mm² and then fits S0, f, D*: its
covariance here is the linearised (delta-method) covariance of that two-stage estimator, the
error of D̂ propagated into the second stage; it is an asymptotic covariance, not a bound for every
estimator, and it ignores the bias of D̂ (the perfusion term left at b >= 500).  f·D* takes its
variance by the delta method, gradient (0, 0, D*, f).

Required SNR from the bound.  The Monte Carlo criterion is a mean |error| <= ``max_error`` %.  For
an unbiased, Gaussian estimate of SD s, mean |e| = s·sqrt(2/π) (≈ 0.80·s), so the criterion holds
when the relative SD s/p <= max_error / (100·sqrt(2/π)).  The relative SD scales as σ = S0_TRUE /
SNR, so the required SNR of a parameter is ``100·sqrt(2/π)·r1 / max_error``, r1 its relative SD at
SNR 1.  This is the asymptotic answer: it knows nothing of the fitter's bounds, its bias at low
SNR, or failed fits, and is optimistic where those matter (small f, D* near D or near a bound).

The design.  The protocol is a number of volumes per b-value on a grid (``bmin``, ``bmin + b_step``,
... ``bmax``, plus the fixed b-values), N in all, with at least the fixed ones.  A multi-start local
search over these integer counts (moves: one volume to another b-value, near or far) minimises the
bound's required SNR aggregated over the tissue grid (max or mean over cells); the ``top_k`` best
distinct protocols (half of them from a second search that also holds the D of the fitter's
initialisation line, ln S on b >= its threshold, which sets the start and bounds of D and D*, to
the criterion: the bound does not know about it) are then scored by the Monte Carlo required SNR of
:func:`ivim_common.simulation.required_snr` (the toolbox's fitter, seeded draws shared by every
protocol) and the best by that score is chosen.
"""
import numpy as np

from . import model
from . import simulation as simu
from .constants import DEFAULT_MAX_ERROR, S0_TRUE
from .errors import InputError

CONDITIONS = ("FDstar", "all", "f", "Dstar", "D")     # as -condition; f, Dstar, D: that one alone
AGGREGATES = ("max", "mean")
GAUSS_MEAN_ABS = np.sqrt(2.0 / np.pi)                 # mean|e| / SD of a centred Gaussian
ERR_INDEX = {name: i for i, name in enumerate(simu.ERR_ORDER)}   # f, Dstar, D, fDstar


APPROACHES = ("one-step", "two-step")               # the fits whose bound is modelled here


def _covariance(bvals, truth, approach, bounds_version="2020"):
    """Covariance of (S0, D, f, D*) at σ = 1 with S0 = S0_TRUE, for several protocols at once.

    Parameters
    ----------
    bvals : ndarray (n_protocols, n_volumes)
        b-values of the volumes of each protocol (repeats allowed).
    truth : ndarray (n_cells, 4)
        True (f, D*, D, f·D*) (simulation.ERR_ORDER).

    Returns
    -------
    ndarray (n_protocols, n_cells, 4, 4); +inf where the parameters cannot be estimated (fewer
    distinct b-values than free parameters; two-step: fewer than 2 at b >= its threshold).
    """
    f, dstar, d = truth[:, 0], truth[:, 1], truth[:, 2]
    b = bvals[:, None, :]                                          # (p, 1, n): broadcast over cells
    jac = model.ivim_jacobian(b, S0_TRUE, d, f, dstar)             # (p, c, n, 4)
    n_p, n_c = bvals.shape[0], truth.shape[0]
    cov = np.full((n_p, n_c, 4, 4), np.inf)
    distinct = 1 + (np.diff(np.sort(bvals, axis=1), axis=1) > 0).sum(axis=1)
    cfg = model.settings(approach, bounds_version)
    if cfg["vary_D"]:
        ok = distinct >= 4
        cov[ok] = _inverse(np.einsum("pcni,pcnj->pcij", jac[ok], jac[ok]))
        return cov
    # two-step: D from the line of ln S on b >= threshold, then (S0, f, D*) with D fixed at it
    high = bvals >= cfg["bval_threshold"]
    high_distinct = np.array([np.unique(row[h]).size for row, h in zip(bvals, high)])
    ok = (distinct >= 3) & (high_distinct >= 2)
    jac = jac[ok]
    a_d = _line_coefficients(bvals[ok], truth, cfg["bval_threshold"])  # D̂ - D per unit of noise, (p, c, n)
    keep = [0, 2, 3]
    j_t, j_d = jac[..., keep], jac[..., 1]
    gram = np.einsum("pcni,pcnj->pcij", j_t, j_t)
    cross = np.einsum("pcni,pcn->pci", j_t, j_d)
    resid = j_t.swapaxes(-1, -2) - cross[..., None] * a_d[:, :, None, :]      # (p, c, 3, n)
    cols = np.zeros(a_d.shape[:2] + (4, a_d.shape[2]))
    cols[:, :, 1] = a_d
    cols[:, :, keep] = np.einsum("pcij,pcjn->pcin", _inverse(gram), resid)
    cov[ok] = np.einsum("pcin,pcjn->pcij", cols, cols)
    return cov


def _line_coefficients(bvals, truth, threshold):
    """Linearised error of D from the line of ln S against b on b >= threshold (the fitter's
    initialisation; two-step's D): D̂ - D = Σ a·noise, a of shape (n_protocols, n_cells, n_volumes).
    Protocols with fewer than 2 distinct b-values there get a = inf."""
    f, dstar, d = truth[:, 0], truth[:, 1], truth[:, 2]
    high = bvals >= threshold
    b_mean = (bvals * high).sum(axis=1, keepdims=True) / np.maximum(high.sum(axis=1, keepdims=True), 1)
    centred = np.where(high, bvals - b_mean, 0.0)
    sxx = (centred ** 2).sum(axis=1)
    signal = model.ivim_signal(bvals[:, None, :], S0_TRUE, d, f, dstar)      # (p, c, n)
    with np.errstate(divide="ignore", invalid="ignore"):
        a = centred[:, None, :] / (sxx[:, None, None] * signal)
    a[sxx <= 0] = np.inf
    return a


def _inverse(matrices):
    """Batched inverse; (near-)singular matrices give +inf (the parameters cannot be estimated)."""
    scale = np.sqrt(np.einsum("...ii->...i", matrices))
    scale = np.where(scale > 0, scale, 1.0)
    outer = scale[..., :, None] * scale[..., None, :]
    m = matrices / outer                               # equilibrated: S0 and D differ by 1e6
    eye = np.eye(m.shape[-1])
    inv = np.linalg.inv(m + 1e-13 * eye)               # the ridge keeps singular ones invertible
    singular = np.einsum("...ii->...i", inv).max(axis=-1) > 1e10
    inv[singular] = np.inf
    return inv / outer


def relative_sd(bvals, truth, approach="one-step", bounds_version="2020"):
    """Relative SD (fraction) of (f, D*, D, f·D*) at SNR 1 (σ = S0_TRUE), from the bound.

    Parameters
    ----------
    bvals : array_like (n_volumes,) or (n_protocols, n_volumes)
        b-values of the volumes, s/mm² (repeats allowed), of one or several protocols.
    truth : ndarray (n_cells, 4)
        True (f, D*, D, f·D*), simulation.ERR_ORDER.

    Returns
    -------
    ndarray (n_cells, 4), or (n_protocols, n_cells, 4); inf where not estimable.
    The relative SD at SNR s is this / s.
    """
    truth = np.atleast_2d(np.asarray(truth, dtype=float))
    bvals = np.asarray(bvals, dtype=float)
    cov = _covariance(np.atleast_2d(bvals), truth, approach, bounds_version)
    f, dstar = truth[:, 0], truth[:, 1]
    with np.errstate(invalid="ignore"):   # inf * 0 where not estimable: set to inf below
        var = np.stack([cov[..., 2, 2], cov[..., 3, 3], cov[..., 1, 1],
                        dstar ** 2 * cov[..., 2, 2] + f ** 2 * cov[..., 3, 3]
                        + 2 * f * dstar * cov[..., 2, 3]], axis=-1)
    var[np.isinf(cov).any(axis=(-2, -1))] = np.inf
    rsd = S0_TRUE * np.sqrt(np.maximum(var, 0.0)) / truth
    return rsd if bvals.ndim == 2 else rsd[0]


def snr_from_relative_sd(rsd1, condition="FDstar", max_error=DEFAULT_MAX_ERROR):
    """Required SNR from relative SDs at SNR 1 (..., 4): mean|e| = sqrt(2/π)·SD <= max_error %.

    ``condition``: 'FDstar' (f·D*), 'all' (the largest of the four), or 'f', 'Dstar', 'D'.
    """
    if condition not in CONDITIONS:
        raise ValueError(f"unknown condition {condition!r} (choose from {', '.join(CONDITIONS)})")
    rsd1 = np.asarray(rsd1, dtype=float)
    worst = (rsd1.max(axis=-1) if condition == "all"
             else rsd1[..., ERR_INDEX["fDstar" if condition == "FDstar" else condition]])
    return 100.0 * GAUSS_MEAN_ABS * worst / max_error


def grid_truth(F_range, Dstar_range, D_range):
    """True (f, D*, D, f·D*) of every cell, (n_cells, 4), cells in the simulations' C order."""
    f, dstar, d = (a.ravel() for a in np.meshgrid(F_range, Dstar_range, D_range, indexing="ij"))
    return np.stack([f, dstar, d, f * dstar], axis=-1)


def required_snr_crlb(bvals, grid, condition="FDstar", max_error=DEFAULT_MAX_ERROR,
                      approach="one-step", bounds_version="2020"):
    """Required SNR of every grid cell from the Cramér-Rao bound (see the module docstring).

    Parameters
    ----------
    bvals : array_like (n_b,)
        b-values of the volumes, s/mm² (repeats count once per volume).
    grid : tuple (F_range, Dstar_range, D_range)
        True f, D* and D (mm²/s) values.
    condition : {'FDstar', 'all', 'f', 'Dstar', 'D'}
    max_error : float
        Largest acceptable mean |error| in %.

    Returns
    -------
    ndarray (nF, nDstar, nD); inf where the protocol cannot estimate the parameters.
    """
    shape = tuple(len(r) for r in grid)
    rsd1 = relative_sd(bvals, grid_truth(*grid), approach, bounds_version)
    return snr_from_relative_sd(rsd1, condition, max_error).reshape(shape)


# ----------------------------------------------------------------------------------------------
# The design: candidates from the bound, then the Monte Carlo

def check_budget(n_volumes, bmin, bmax, b_step, fixed_bvals, approach):
    """Raise InputError (one line) for a budget that cannot give a protocol."""
    need = model.n_free(approach)
    if n_volumes < need:
        raise InputError(f"-n: {n_volumes} volumes cannot estimate the {need} free parameters of {approach}")
    if not bmax > bmin >= 0:
        raise InputError(f"--bmax {bmax:g} must be larger than --bmin {bmin:g} (and --bmin >= 0)")
    if not b_step > 0:
        raise InputError(f"--b-step: must be > 0 (got {b_step:g})")
    fixed = np.asarray(fixed_bvals, dtype=float)
    outside = fixed[(fixed < bmin) | (fixed > bmax)]
    if outside.size:
        raise InputError(f"--fixed-bvals: {outside[0]:g} is outside [--bmin {bmin:g}, --bmax {bmax:g}]")
    if fixed.size > n_volumes:
        raise InputError(f"--fixed-bvals: {fixed.size} fixed b-values but only -n {n_volumes} volumes")
    n_allowed = len(candidate_bvals(bmin, bmax, b_step, fixed))
    if n_allowed < need:
        raise InputError(f"--b-step {b_step:g}: only {n_allowed} b-values in [{bmin:g}, {bmax:g}], "
                         f"{approach} needs {need} distinct ones")
    if approach == "two-step" and bmax < model.settings(approach)["bval_threshold"]:
        raise InputError(f"--bmax {bmax:g}: two-step needs b-values >= "
                         f"{model.settings(approach)['bval_threshold']:g} to fit D")


def candidate_bvals(bmin, bmax, b_step, fixed_bvals=()):
    """The b-values a protocol may use: bmin, bmin + b_step, ... <= bmax, bmax, and the fixed ones."""
    grid = bmin + b_step * np.arange(int(np.floor((bmax - bmin) / b_step + 1e-9)) + 1)
    return np.unique(np.round(np.concatenate([grid, [bmax], np.asarray(fixed_bvals, float)]), 9))


def _objective(bvals, truth, condition, aggregate, approach, bounds_version, init_line=False):
    """Bound-based required SNR (max error 1 %) aggregated over cells, one value per protocol.

    ``init_line``: per cell, at least the SNR at which the D of the fitter's initialisation (the
    line of ln S on b >= its threshold, which sets the start and the bounds of D and D*) meets the
    same mean-|error| criterion; the bound alone does not know the fitter starts there.
    """
    snr = snr_from_relative_sd(relative_sd(bvals, truth, approach, bounds_version), condition, 1.0)
    if init_line:
        a = _line_coefficients(bvals, truth, model.settings(approach, bounds_version)["bval_threshold"])
        rsd_line = S0_TRUE * np.sqrt((a ** 2).sum(axis=-1)) / truth[:, 2]
        snr = np.maximum(snr, 100.0 * GAUSS_MEAN_ABS * rsd_line)
    return snr.max(axis=1) if aggregate == "max" else snr.mean(axis=1)


def _moves(volumes, n_fixed, n_b):
    """Protocols one volume away (volumes: indices into the candidate b-values, the fixed ones
    first and never moved): one free volume to another b-value, near (±1, 2, 4, ... grid steps)
    or to any b-value already used, or to either end."""
    out = []
    jumps = 2 ** np.arange(int(np.log2(max(n_b, 2))) + 1)
    used = np.unique(volumes)
    for k in range(n_fixed, len(volumes)):
        i = volumes[k]
        targets = np.unique(np.concatenate([i + jumps, i - jumps, used, [0, n_b - 1]]))
        for j in targets[(targets >= 0) & (targets < n_b) & (targets != i)]:
            v = volumes.copy()
            v[k] = j
            out.append(v)
    moves = np.array(out)
    moves[:, n_fixed:].sort(axis=1)
    return np.unique(moves, axis=0)


def search_crlb(grid, n_volumes, bmin=0.0, bmax=800.0, b_step=5.0, fixed_bvals=(), condition="FDstar",
                aggregate="mean", approach="one-step", bounds_version="2020", n_starts=24, top_k=4,
                seed=0, max_error=DEFAULT_MAX_ERROR, init_line=False):
    """Multi-start integer search of the bound-based objective.

    Parameters
    ----------
    grid : tuple (F_range, Dstar_range, D_range)
    n_volumes : int
        Volumes in all (N).
    bmin, bmax, b_step : float
        The b-values allowed, s/mm²: bmin, bmin + b_step, ..., bmax.
    fixed_bvals : sequence of float
        b-values that must be acquired (a value given twice: at least two volumes of it).
    condition, aggregate : see :data:`CONDITIONS`, :data:`AGGREGATES`
    n_starts : int
        Local searches, from random protocols (seeded by ``seed``).
    top_k : int
        Best distinct local optima returned.
    init_line : bool
        Also require, per cell, the SNR at which the D of the fitter's initialisation (the line of
        ln S on b >= 400 s/mm² one-step 2020, 500 otherwise) meets the criterion: that line sets the
        start and the bounds of D and D* (D <= 1.2·Dinit, D* >= 2·Dinit one-step 2020), which the
        bound alone ignores.

    Returns
    -------
    list of dict, best first: ``bvals`` (volumes, with repeats), ``crlb_objective`` (the
    aggregated required SNR at ``max_error``).
    """
    check_budget(n_volumes, bmin, bmax, b_step, fixed_bvals, approach)
    if aggregate not in AGGREGATES:
        raise ValueError(f"unknown aggregate {aggregate!r}")
    truth = grid_truth(*grid)
    b_unique = candidate_bvals(bmin, bmax, b_step, fixed_bvals)
    n_b, n_fixed = len(b_unique), len(fixed_bvals)
    fixed = np.array([np.argmin(np.abs(b_unique - b)) for b in fixed_bvals], dtype=int)
    rng = np.random.default_rng(seed)
    score = lambda v: _objective(b_unique[v], truth, condition, aggregate, approach, bounds_version, init_line)
    optima = {}
    for _ in range(n_starts):
        volumes = np.concatenate([fixed, np.sort(rng.integers(0, n_b, n_volumes - n_fixed))])
        value = score(volumes[None])[0]
        while True:
            moves = _moves(volumes, n_fixed, n_b)
            values = score(moves)
            best = int(np.argmin(values))
            if not values[best] < value * (1 - 1e-9):
                break
            volumes, value = moves[best], values[best]
        if np.isfinite(value):
            optima.setdefault(tuple(np.sort(volumes)), value)
    ranked = sorted(optima.items(), key=lambda item: item[1])[:top_k]
    return [dict(bvals=b_unique[list(v)], crlb_objective=value / max_error) for v, value in ranked]


def mc_score(min_snr, aggregate="mean"):
    """How the Monte Carlo required SNR (NaN: not reachable) ranks protocols, smaller better:
    (the aggregate over cells, the median over cells, the cells not reachable), a cell not
    reachable counting as infinite (so the median decides when every protocol has one)."""
    snr = np.where(np.isnan(min_snr), np.inf, np.asarray(min_snr, dtype=float)).ravel()
    with np.errstate(invalid="ignore"):
        agg = snr.max() if aggregate == "max" else snr.mean()
    return (float(agg), float(np.median(snr)), int(np.isinf(snr).sum()))


def monte_carlo(sim, bvals, condition="FDstar", max_error=DEFAULT_MAX_ERROR):
    """Monte Carlo required SNR of a protocol (simulation.required_snr on every cell of ``sim``'s
    grid, its seed, draws, fitter and noise), as grid arrays: ``min_snr`` (nF, nDstar, nD),
    ``mean_err_at_min_snr`` (4, nF, nDstar, nD)."""
    from dataclasses import replace

    sim_b = replace(sim, bvals=np.asarray(bvals, dtype=float))
    arrays = simu.run_required_snr(sim_b, condition, max_error)
    return dict(min_snr=arrays["min_snr"], mean_err_at_min_snr=arrays["mean_err_at_min_snr"])


def optimize(sim, n_volumes, bmin=0.0, bmax=800.0, b_step=5.0, fixed_bvals=(), condition="FDstar",
             aggregate="mean", max_error=DEFAULT_MAX_ERROR, n_starts=24, top_k=4, progress=None):
    """Design a protocol: bound-based candidates (:func:`search_crlb`), chosen by Monte Carlo.

    Half of the ``top_k`` candidates (rounded up) come from the bound alone, the rest from the
    bound with the fitter's initialisation line held to the same criterion (``init_line``);
    duplicates are dropped.

    Parameters
    ----------
    sim : simulation.Simulation
        The tissue grid, approach, bounds, engine, noise, seed, draws and jobs of the Monte Carlo
        (its ``bvals`` are ignored).
    progress : callable, optional
        ``progress(text)`` after each step.

    Returns
    -------
    dict: ``candidates`` (list, in bound order: bvals, crlb_objective, mc min_snr grid,
    mean_err_at_min_snr, mc_score), ``best`` (index of the chosen one).
    """
    grid = (sim.F_range, sim.Dstar_range, sim.D_range)
    candidates = []
    for init_line, k in ((False, (top_k + 1) // 2), (True, top_k // 2)):     # the bound alone; fitter-aware
        found = search_crlb(grid, n_volumes, bmin, bmax, b_step, fixed_bvals, condition, aggregate,
                            sim.approach, sim.bounds_version, n_starts, top_k, sim.seed, max_error, init_line)
        new = [c for c in found if not any(np.array_equal(c["bvals"], o["bvals"]) for o in candidates)]
        candidates += [dict(c, init_line=init_line) for c in new[:k]]
    if progress:
        progress(f"{len(candidates)} candidate(s) from the bound")
    for k, cand in enumerate(candidates):
        cand.update(monte_carlo(sim, cand["bvals"], condition, max_error))
        cand["mc_score"] = mc_score(cand["min_snr"], aggregate)
        if progress:
            progress(f"candidate {k + 1}/{len(candidates)}: b = {','.join(f'{b:g}' for b in cand['bvals'])}, "
                     f"Monte Carlo {aggregate} {cand['mc_score'][0]:.4g}, median {cand['mc_score'][1]:.4g}")
    if not candidates:
        raise InputError(f"no protocol of {n_volumes} volumes in [{bmin:g}, {bmax:g}] can estimate the "
                         f"parameters of {sim.approach} (the search found none)")
    best = min(range(len(candidates)), key=lambda k: candidates[k]["mc_score"])
    return dict(candidates=candidates, best=best)


# ----------------------------------------------------------------------------------------------
# The report (JSON-ready; the script writes it)

METHOD = {
    "crlb": ("covariance of (S0, D, f, D*) = sigma^2 (J^T J)^-1, J the Jacobian of the model, one row per "
             "volume (one-step); two-step: D from the line of ln S on b >= 500, its error propagated into "
             "the fit of (S0, f, D*) (linearised); f*D* by the delta method"),
    "crlb_required_snr": ("SNR at which sqrt(2/pi) * 100 * SD/p <= max_error: for a Gaussian, unbiased "
                          "estimate, mean|error| = sqrt(2/pi) * SD (asymptotic; ignores bounds, bias, failures)"),
    "search": ("multi-start local search over the b-values of the free volumes (b on the --b-step grid), "
               "one volume moved at a time, minimising the bound's required SNR aggregated over cells; "
               "half the candidates with, per cell, at least the SNR at which the D of the fitter's "
               "initialisation line (ln S on b >= its threshold) meets the criterion too (init_line)"),
    "choice": ("Monte Carlo required SNR (toolbox fitter, seeded draws common to every protocol) of the "
               "top-k candidates: smallest aggregate wins, then smallest median, then fewest unreachable "
               "cells; an unreachable cell counts as infinite"),
}


def _stats(min_snr):
    snr = np.where(np.isnan(min_snr), np.inf, min_snr).ravel()
    finite = snr[np.isfinite(snr)]
    return dict(median=float(np.median(snr)), mean=float(snr.mean()), max=float(snr.max()),
                max_reachable=float(finite.max()) if finite.size else None,
                n_unreachable=int(np.isinf(snr).sum()), n_cells=int(snr.size))


def _protocol_record(sim, bvals, mc, condition, max_error):
    b, n = np.unique(bvals, return_counts=True)
    crlb = required_snr_crlb(bvals, (sim.F_range, sim.Dstar_range, sim.D_range), condition, max_error,
                             sim.approach, sim.bounds_version)
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = (crlb / mc["min_snr"]).ravel()
    ratio = ratio[np.isfinite(ratio)]
    return {
        "bvals": np.asarray(bvals).tolist(),
        "volumes_per_bval": {f"{v:g}": int(k) for v, k in zip(b, n)},
        "monte_carlo": _stats(mc["min_snr"]),
        "crlb": _stats(crlb),
        "crlb_over_mc": (dict(zip(("p5", "median", "p95"), np.percentile(ratio, [5, 50, 95]).tolist()),
                              n_cells=int(ratio.size)) if ratio.size else None),
        "min_snr": mc["min_snr"].tolist(),
        "mean_err_at_min_snr": mc["mean_err_at_min_snr"].tolist(),
        "crlb_min_snr": crlb.tolist(),
    }


def report(sim, result, reference, settings, run_time):
    """The design's report: settings, method, candidates, the chosen and the reference protocols
    (per-cell Monte Carlo and bound-based required SNR, errors at it), their comparison.

    ``min_snr`` grids are (nF, nDstar, nD), NaN (null in JSON) = not reachable below the cap;
    ``mean_err_at_min_snr`` (4, nF, nDstar, nD) in the order f, Dstar, D, fDstar.
    """
    cond, max_error = settings["condition"], settings["max_error"]
    best = result["candidates"][result["best"]]
    chosen = _protocol_record(sim, best["bvals"], best, cond, max_error)
    ref = _protocol_record(sim, settings["compare_bvals"], reference, cond, max_error)
    med_opt, med_ref = chosen["monte_carlo"]["median"], ref["monte_carlo"]["median"]
    return {
        "settings": {**settings, **json_settings(sim)},
        "grid": {"F_range": sim.F_range.tolist(), "Dstar_range": sim.Dstar_range.tolist(),
                 "D_range": sim.D_range.tolist(), "cell_index": "(iF*nDstar + iDstar)*nD + iD"},
        "snr_definition": simu.SNR_DEFINITION,
        "method": METHOD,
        "candidates": [{"bvals": c["bvals"].tolist(), "crlb_objective": float(c["crlb_objective"]),
                        "init_line": c["init_line"],
                        "monte_carlo": _stats(c["min_snr"]), "chosen": k == result["best"]}
                       for k, c in enumerate(result["candidates"])],
        "optimized": chosen,
        "reference": ref,
        "median_required_snr_change_percent": (100.0 * (med_opt / med_ref - 1.0)
                                               if np.isfinite(med_ref) and np.isfinite(med_opt) else None),
        "run_time_s": round(run_time, 3),
    }


def json_settings(sim):
    return dict(approach=sim.approach, bounds_version=sim.bounds_version, engine=sim.engine, seed=sim.seed,
                noise=sim.noise, n_draws=sim.n_draws, jobs=sim.jobs)


def summary_text(doc):
    """A few lines: the chosen and the reference protocols, their Monte Carlo required SNR."""
    lines = []
    for name in ("optimized", "reference"):
        rec = doc[name]
        mc = rec["monte_carlo"]
        lines.append(f"{name}: b = {','.join(f'{b:g}' for b in rec['bvals'])}: required SNR median "
                     f"{mc['median']:.4g}, worst reachable {mc['max_reachable']}, "
                     f"{mc['n_unreachable']}/{mc['n_cells']} cells not reachable")
    change = doc["median_required_snr_change_percent"]
    if change is not None:
        lines.append(f"median required SNR {change:+.1f} % against the reference")
    return "\n".join(lines)


def run_required_snr_crlb(sim, condition="FDstar", max_error=DEFAULT_MAX_ERROR, shard=(1, 1)):
    """Required-SNR arrays as :func:`ivim_common.simulation.run_required_snr` writes them, from the
    bound instead of the Monte Carlo (``ivim_simu_compute_required_snr.py --method crlb``).

    ``min_snr`` is the bound's required SNR (NaN where not estimable) and ``mean_err_at_min_snr``
    the mean |error| the bound predicts there, 100·sqrt(2/π)·SD/p in %; ``n_noise_draws`` is 0.
    """
    cells = simu.shard_cells(sim.n_cells, *shard)
    rsd1 = relative_sd(sim.bvals, grid_truth(sim.F_range, sim.Dstar_range, sim.D_range)[cells],
                       sim.approach, sim.bounds_version)
    snr = snr_from_relative_sd(rsd1, condition, max_error)
    snr = np.where(np.isfinite(snr), snr, np.nan)
    arrays = simu.grid_arrays(sim, "required_snr", shard)
    arrays["min_snr"] = simu.to_grid(sim, cells, snr, np.nan)
    arrays["mean_err_at_min_snr"] = simu.to_grid(sim, cells, 100.0 * GAUSS_MEAN_ABS * rsd1 / snr[:, None], np.nan)
    arrays["n_noise_draws"] = np.array(0)
    arrays["settings"] = np.array(simu.settings_text(sim, condition=condition, max_error=float(max_error),
                                                 snr_start=None, method="crlb"))
    return arrays
