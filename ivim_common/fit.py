"""IVIM fitters: the lmfit reference (as the original toolbox) and the fast vectorised engine.

Both solve the same problem, voxel by voxel:

1. the shared initialisation (:func:`ivim_common.model.initial_estimate`);
2. a fit of all b-values within the nominal bounds (:func:`ivim_common.model.nominal_bounds`);
3. a refinement within ±5 % of the step-2 values (:func:`ivim_common.model.refinement_bounds`).

:func:`fit_voxels` is the entry point; it returns the maps as a dict of 1-D arrays.
"""
import numpy as np

from . import model
from .constants import ENGINES, OUTPUT_NAMES  # noqa: F401


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
        aic = n_b * np.log(np.maximum(rss, 1e-250 * n_b) / n_b) + 2 * n_varied  # floor as lmfit
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
        Keys of OUTPUT_NAMES.  Failed voxels (non-finite or non-positive signal, or a fit
        that returned non-finite values) have NaN parameters and exception = 1.
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
        params = fit_fast(bvals, signal[ok], lo, hi, vary)
    finite = np.isfinite(params).all(axis=1)      # a fit that did not give numbers failed too
    fitted = ok.copy()
    fitted[ok] = finite
    params = params[finite]

    out = {name: np.full(n, np.nan) for name in OUTPUT_NAMES}
    for j, name in enumerate(model.PARAM_NAMES):
        out[name][fitted] = params[:, j]
    out["FivimXDstar"][fitted] = params[:, 2] * params[:, 3]
    _, out["AIC"][fitted], out["R2"][fitted] = goodness_of_fit(bvals, signal[fitted], params, int(vary.sum()))
    out["exception"] = np.where(fitted, 0.0, 1.0)
    return out


# --- The fast engine ---------------------------------------------------------------------------
# Variable projection: for fixed (D, D*) the signal is linear in the amplitudes a = S0·f and
# c = S0·(1 - f), and the bounds on S0 and f are linear constraints on them, so each point of a
# (D, D*) grid costs a closed-form 2-variable constrained least squares.  Four points of each
# voxel's grid seed a box-constrained Newton (Levenberg-Marquardt damped, exact Hessian, so large
# residuals still converge fast; each trial's S0 and f solved exactly the same way) in the
# nominal box; the lowest result is refined in its ±5 % box.  The grid works on blocks of
# voxels, Newton on a working set of rows, both small enough to stay in the CPU cache.

GRID_D = 12          # points over D in each voxel's box (one-step)
GRID_DSTAR = 20      # points over D* in each voxel's box
GRID_CHUNK = 32      # voxels per grid block: keeps its temporaries in cache
NEWTON_BLOCK = 2048  # rows in Newton's working set, for the same reason
STEP2_TIE = 1e-6     # step-2 candidates this close (relative RSS) to the lowest are ties


def _geomspace(lo, hi, num):
    """Per-voxel geometric grids, shape (n_voxels, num); a single point where lo == hi."""
    t = np.linspace(0.0, 1.0, num) if num > 1 else np.zeros(1)
    return lo[:, None] * (hi / lo)[:, None] ** t


def _amplitudes(gram, yy, box, with_args=True):
    """Exact best (S0, f) for y ≈ S0·f·x1 + S0·(1-f)·x2, S0 in [s_lo, s_hi], f in [f_lo, f_hi].

    ``gram`` = (g11, g12, g22, h1, h2) = (x1·x1, x1·x2, x2·x2, x1·y, x2·y), yy = y·y, all
    broadcast together.  The feasible set is a quadrilateral in (S0·f, S0·(1-f)), so the minimum
    is the unconstrained one when feasible, else the best point of one of its four edges, each a
    1-D least squares.

    Returns
    -------
    s0, f, rss : ndarray
        With ``with_args``; without, ``rss`` and ``rss_face``, the best RSS on the edge f = f_hi.
    """
    g11, g12, g22, h1, h2 = gram
    s_lo, s_hi, f_lo, f_hi = box
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        cands = []
        for f in (f_hi, f_lo):                    # f on a bound: S0 = (h·u)/(u·Gu), u = (f, 1-f)
            if np.all(f == 0):                    # the common f_lo: no D* dependence, cheap
                hu, uu = h2, g22
            else:
                hu = f * h1 + (1 - f) * h2
                uu = f * f * g11 + 2 * f * (1 - f) * g12 + (1 - f) ** 2 * g22
            s0 = np.clip(hu / uu, s_lo, s_hi)
            cands.append((s0, f, yy - s0 * (2 * hu - s0 * uu)))
        hd, gd = h1 - h2, g12 - g22
        dd = g11 - g12 - gd                       # |x1 - x2|²
        for s0 in (s_lo, s_hi):                   # S0 on a bound: f is a 1-D least squares
            lin = hd - s0 * gd
            f = np.clip(lin / (s0 * dd), f_lo, f_hi)
            cands.append((s0, f, yy - s0 * (2 * h2 - s0 * g22) - f * s0 * (2 * lin - f * s0 * dd)))
        det = g11 * g22 - g12 * g12
        a = (g22 * h1 - g12 * h2) / det
        s_free = a + (g11 * h2 - g12 * h1) / det
        f_free = a / s_free
        inside = ((det > 1e-12 * g11 * g22) & (s_free >= s_lo) & (s_free <= s_hi)
                  & (f_free >= f_lo) & (f_free <= f_hi))
        cands.append((s_free, f_free, np.where(inside, yy - a * h1 - (s_free - a) * h2, np.inf)))
    if not with_args:                             # the grid needs the minimum only
        rss = cands[0][2]
        for c in cands[1:]:
            rss = np.minimum(rss, c[2])
        return rss, cands[0][2]
    shape = np.broadcast_shapes(*(np.shape(v) for c in cands for v in c))
    s0, f, rss = (np.broadcast_to(v, shape) for v in cands[0])
    for s0_c, f_c, rss_c in cands[1:]:
        m = rss_c < rss
        s0, f, rss = np.where(m, s0_c, s0), np.where(m, f_c, f), np.where(m, rss_c, rss)
    return s0, f, rss


def _gram(bvals, signal, d, dstar):
    """Gram terms for every (D, D*) pair of per-voxel grids d (n, nD), dstar (n, nS)."""
    e_d = np.exp(-bvals * d[:, :, None])                     # (n, nD, nb)
    e_p = np.exp(-bvals * dstar[:, None, :, None])[:, 0]     # (n, nS, nb)
    e_p_t = e_p.transpose(0, 2, 1)
    e_d2 = e_d * e_d
    e_dy = e_d * signal[:, None, :]
    return (e_d2 @ (e_p_t * e_p_t), e_d2 @ e_p_t, e_d2.sum(-1)[:, :, None],
            e_dy @ e_p_t, e_dy.sum(-1)[:, :, None])


def _grid_starts(bvals, signal, lo, hi, vary):
    """(D, D*) of four starting points per voxel from a (D, D*) grid, amplitudes solved exactly.

    The two lowest local minima of the grid (the same point twice where it has one), and the
    best grid points on the faces f = f_hi and D* = D*_hi.  Returns two arrays (4, n_voxels).
    """
    d_start, dstar_start = np.empty((4, len(signal))), np.empty((4, len(signal)))
    for i in range(0, len(signal), GRID_CHUNK):
        part = slice(i, i + GRID_CHUNK)
        d_start[:, part], dstar_start[:, part] = _grid_block(bvals, signal[part], lo[part], hi[part], vary)
    return d_start, dstar_start


def _grid_block(bvals, signal, lo, hi, vary):
    n = len(signal)
    d = _geomspace(lo[:, 1], hi[:, 1], GRID_D if vary[1] else 1)
    dstar = _geomspace(lo[:, 3], hi[:, 3], GRID_DSTAR)
    gram = _gram(bvals, signal, d, dstar)
    yy = np.einsum("ij,ij->i", signal, signal)
    box = [v[:, None, None] for v in (lo[:, 0], hi[:, 0], lo[:, 2], hi[:, 2])]
    rss, rss_face = _amplitudes(gram, yy[:, None, None], box, with_args=False)
    # local minima: no lower value among the 8 neighbours
    pad = np.full((n, rss.shape[1] + 2, rss.shape[2] + 2), np.inf)
    pad[:, 1:-1, 1:-1] = rss
    is_min = np.ones(rss.shape, dtype=bool)
    for di in (0, 1, 2):
        for dj in (0, 1, 2):
            if (di, dj) != (1, 1):
                is_min &= rss <= pad[:, di:di + rss.shape[1], dj:dj + rss.shape[2]]
    flat = np.where(is_min, rss, np.inf).reshape(n, -1)
    rows = np.arange(n)
    first = flat.argmin(axis=1)
    flat[rows, first] = np.inf
    second = flat.argmin(axis=1)
    second = np.where(np.isfinite(flat[rows, second]), second, first)
    n_s = rss.shape[2]
    dstar_face = rss[:, :, -1].argmin(axis=1) * n_s + n_s - 1
    idx = np.stack([first, second, rss_face.reshape(n, -1).argmin(axis=1), dstar_face])
    return d[rows, idx // n_s], dstar[rows, idx % n_s]


def _best_amplitudes(bvals, signal, params, lo, hi):
    """``params`` (n, 4) with S0 and f replaced by their exact best values in the box for each
    row's (D, D*) (variable projection); returns them with their signal terms (signal, u, w)
    of :func:`ivim_common.model.ivim_signal_terms`."""
    u = np.exp(-bvals * params[:, 1:2])
    w = np.expm1(-bvals * params[:, 3:4])
    x1 = u + u * w                                   # the perfusion basis exp(-b·(D + D*))
    dot = lambda a, c: np.einsum("ij,ij->i", a, c)  # noqa: E731
    gram = (dot(x1, x1), dot(x1, u), dot(u, u), dot(x1, signal), dot(u, signal))
    s0, f, _ = _amplitudes(gram, dot(signal, signal), (lo[:, 0], hi[:, 0], lo[:, 2], hi[:, 2]))
    params = params.copy()
    params[:, 0], params[:, 2] = s0, f
    return (params,) + model.ivim_signal_terms(bvals, params, (u, w))


def _start_amplitudes(bvals, signal, d, dstar, lo, hi):
    """Starting points (n, 4): the exact best (S0, f) in the box for each voxel's (D, D*)."""
    params = np.column_stack([np.ones_like(d), d, np.zeros_like(d), dstar])
    return _best_amplitudes(bvals, signal, params, lo, hi)[0]


def _cholesky_solve(a, g):
    """Solve a·x = g for a batch of small symmetric matrices a (n, k, k), elementwise in numpy.

    Returns x (n, k) and a boolean (n,) that is False where a is not positive definite (x is
    then meaningless).
    """
    k = g.shape[1]
    low = [[None] * k for _ in range(k)]
    ok = np.ones(len(g), dtype=bool)
    for j in range(k):
        d = a[:, j, j] - sum(low[j][m] * low[j][m] for m in range(j))
        ok &= d > 0
        low[j][j] = np.sqrt(np.where(d > 0, d, 1.0))
        for i in range(j + 1, k):
            low[i][j] = (a[:, i, j] - sum(low[i][m] * low[j][m] for m in range(j))) / low[j][j]
    y = [None] * k
    for i in range(k):
        y[i] = (g[:, i] - sum(low[i][m] * y[m] for m in range(i))) / low[i][i]
    x = [None] * k
    for i in reversed(range(k)):
        x[i] = (y[i] - sum(low[m][i] * x[m] for m in range(i + 1, k))) / low[i][i]
    return np.stack(x, axis=1), ok


def _newton(bvals, signal, params, lo, hi, vary, max_iter=100, rtol=1e-11):
    """Box-constrained damped Newton from ``params``, row by row; returns params (n, 4), RSS (n,).

    Works in coordinates scaled to [0, 1] over each row's box; fixed parameters, and those
    on a bound whose gradient points outwards, are held (projected Newton).  The Hessian is
    exact (Gauss-Newton plus the residual-weighted second derivatives, so large residuals still
    converge fast) where, damped Levenberg-Marquardt style, it is positive definite; else the
    Gauss-Newton one.  Each step is tried clipped to the box and, where clipping changed it,
    also shortened to its first bound.  A row stops once converged or after ``max_iter``
    iterations.  The rows stream through a working set of NEWTON_BLOCK rows (small enough to
    stay in the CPU cache): a row that stops leaves it, the next waiting rows fill it up.
    """
    n = len(params)
    params = np.clip(params, lo, hi)
    width = np.where(vary, hi - lo, 0.0)
    rss_out = np.empty(n)
    eye = np.eye(4)
    state, waiting = None, 0          # working set: row, x, params, width, lo, signal, resid, u, w, rss, lam, iterations
    while True:
        room = NEWTON_BLOCK - (0 if state is None else len(state[0]))
        if waiting < n and (state is None or room >= NEWTON_BLOCK // 4):
            rows = np.arange(waiting, min(n, waiting + room))
            waiting = rows[-1] + 1
            p, wd, l0 = params[rows], width[rows], lo[rows]
            x = np.divide(p - l0, wd, out=np.zeros_like(p), where=wd > 0)
            sig, u, w = model.ivim_signal_terms(bvals, p)
            r = sig - signal[rows]
            new = [rows, x, p, wd, l0, signal[rows], r, u, w, np.einsum("ij,ij->i", r, r),
                   np.full(len(rows), 1e-4), np.zeros(len(rows), dtype=int)]
            state = new if state is None else [np.concatenate(pair) for pair in zip(state, new)]
        if state is None or len(state[0]) == 0:
            break
        rows, x, p, wd, l0, y, r, u, w, rss, lam, it = state
        grad, gn, hess = model.ivim_newton_terms(bvals, p, r, (u, w))
        ww = wd[:, :, None] * wd[:, None, :]
        grad *= wd
        gn *= ww
        hess *= ww
        held = (wd == 0) | ((x <= 0.0) & (grad > 0.0)) | ((x >= 1.0) & (grad < 0.0))
        outer = held[:, :, None] | held[:, None, :]
        damp = (lam[:, None] * np.abs(np.einsum("nii->ni", gn)) + 1e-300 + held)[:, :, None] * eye
        grad[held] = 0.0
        step, pd = _cholesky_solve(np.where(outer, 0.0, hess) + damp, -grad)
        if not pd.all():
            npd = ~pd
            step[npd] = _cholesky_solve(np.where(outer[npd], 0.0, gn[npd]) + damp[npd], -grad[npd])[0]
        x_new = np.clip(x + step, 0.0, 1.0)
        unclipped = np.all(x_new == x + step, axis=1)
        clipped = np.flatnonzero(~unclipped)
        if clipped.size:              # also try the step shortened to its first bound
            s_c, x_c = step[clipped], x[clipped]
            with np.errstate(divide="ignore", invalid="ignore"):
                reach = np.where(s_c > 0, (1.0 - x_c) / s_c, np.where(s_c < 0, -x_c / s_c, np.inf))
            x_short = np.clip(x_c + np.minimum(reach.min(axis=1), 1.0)[:, None] * s_c, 0.0, 1.0)
            x_new = np.concatenate([x_new, x_short])
            trial_rows = np.concatenate([np.arange(len(x)), clipped])
        else:
            trial_rows = slice(None)
        # the trial's (D, D*) with its exact best (S0, f): variable projection, which keeps the
        # steps on the floor of the curved f-D* valley instead of crawling along it
        l_t, w_t = l0[trial_rows], wd[trial_rows]
        p_new, sig, u_new, w_new = _best_amplitudes(bvals, y[trial_rows], l_t + x_new * w_t, l_t, l_t + w_t)
        x_new = np.divide(p_new - l_t, w_t, out=np.zeros_like(p_new), where=w_t > 0)
        r_new = sig - y[trial_rows]
        rss_new = np.einsum("ij,ij->i", r_new, r_new)
        pick = np.arange(len(x))      # per row, the better of its two trials
        if clipped.size:
            short_better = np.flatnonzero(rss_new[len(x):] < rss_new[clipped])
            pick[clipped[short_better]] = len(x) + short_better
        rss_new = rss_new[pick]
        better = rss_new < rss
        # converged: an undamped, unclipped Newton step changes nothing that matters
        settled = (np.abs(rss - rss_new) <= rtol * rss) & unclipped & (lam <= 1e-2)
        it += 1
        done = settled | (np.abs(step).max(axis=1) < 1e-12) | (~better & (lam > 1e8)) | (it >= max_iter)
        acc = pick[better]
        x[better], p[better], r[better], u[better], w[better] = x_new[acc], p_new[acc], r_new[acc], u_new[acc], w_new[acc]
        rss[better] = rss_new[better]
        lam[:] = np.where(better, np.maximum(lam * 0.2, 1e-9), lam * 8.0)
        if done.any():
            params[rows[done]], rss_out[rows[done]] = p[done], rss[done]
            state = [a[~done] for a in state]
    return params, rss_out


def fit_fast(bvals, signal, lo, hi, vary):
    """The vectorised engine.

    Step 2: candidates come from the two lowest local minima of a (D, D*) grid and from the
    best grid points of the faces f = f_max and D* = D*_max (where interior starts can stall
    short of the box's minimum); each is polished by Newton in the nominal box (on its face
    for the last two).  The step-2 result is the candidate of lowest RSS; candidates within
    STEP2_TIE of it (relative RSS) are ties that a differential evolution could not tell apart.
    Step 3: Newton in the ±5 % box of the step-2 result (of each tie, the lowest refined RSS
    winning).  Where step-2 f is 0, D* is undetermined, so the refinement searches D* over
    its whole nominal range (±5 %).  The rows of all voxels go through Newton together.

    Parameters
    ----------
    bvals : ndarray (n_b,); signal : ndarray (n_voxels, n_b)
    lo, hi : ndarray (n_voxels, 4), nominal bounds; vary : ndarray of bool (4,)

    Returns
    -------
    params : ndarray (n_voxels, 4)
    """
    n = len(signal)
    if n == 0:
        return np.empty((0, 4))
    d_start, dstar_start = _grid_starts(bvals, signal, lo, hi, vary)
    voxel = np.tile(np.arange(n), 4)
    box_lo = lo[voxel]
    for k, face in ((2, 2), (3, 3)):            # faces: parameter held at its upper bound
        box_lo[k * n:(k + 1) * n, face] = hi[:, face]
    start = _start_amplitudes(bvals, signal[voxel], d_start.ravel(), dstar_start.ravel(), box_lo, hi[voxel])
    new = np.ones(4 * n, dtype=bool)            # drop candidates that repeat the first
    new[n:] = np.any(start[n:] != np.tile(start[:n], (3, 1)), axis=1)
    voxel, start, box_lo = voxel[new], start[new], box_lo[new]
    step2, rss2 = _newton(bvals, signal[voxel], start, box_lo, hi[voxel], vary)
    best2 = np.full(n, np.inf)
    np.minimum.at(best2, voxel, rss2)
    tie = rss2 <= best2[voxel] * (1 + STEP2_TIE)
    voxel, step2 = voxel[tie], step2[tie]
    order = np.lexsort(tuple(step2.T) + (voxel,))   # candidates that reached the same step-2
    s, v = step2[order], voxel[order]                # point are refined once
    repeat = (v[1:] == v[:-1]) & np.all(np.abs(s[1:] - s[:-1]) <= 1e-9 * np.abs(s[1:]), axis=1)
    keep = np.sort(order[np.r_[True, ~repeat]])
    voxel, step2 = voxel[keep], step2[keep]
    params, rss = _refine(bvals, signal, voxel, step2, lo, hi, vary)
    order = np.lexsort((rss, voxel))            # per voxel, the lowest refined RSS (stable)
    best = order[np.r_[True, voxel[order][1:] != voxel[order][:-1]]]
    return params[best]


def _refine(bvals, signal, voxel, step2, lo, hi, vary):
    """Newton in the ±5 % box of each step-2 result (rows of ``voxel``); returns params, RSS.

    Where step-2 f is 0, D* gets the voxel's nominal range ±5 %, started from a grid.  Where
    the refined f is 0 the signal does not depend on D*: D* is reported at the middle of its
    box (the expectation of the reference's random draw from it; the RSS is the same)."""
    r_lo, r_hi = model.refinement_bounds(step2, vary)
    zero_f = np.flatnonzero(step2[:, 2] <= model.REFINE_F_ZERO[0])
    start = step2.copy()
    if zero_f.size:
        v = voxel[zero_f]
        r_lo[zero_f, 3] = lo[v, 3] * (1 - model.REFINE)
        r_hi[zero_f, 3] = hi[v, 3] * (1 + model.REFINE)
        d_start, dstar_start = _grid_starts(bvals, signal[v], r_lo[zero_f], r_hi[zero_f], vary)
        start[zero_f] = _start_amplitudes(bvals, signal[v], d_start[0], dstar_start[0], r_lo[zero_f], r_hi[zero_f])
    params, rss = _newton(bvals, signal[voxel], start, r_lo, r_hi, vary)
    flat = params[:, 2] == 0.0
    params[flat, 3] = 0.5 * (r_lo[flat, 3] + r_hi[flat, 3])
    return params, rss
