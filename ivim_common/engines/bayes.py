"""Bayesian engine: the posterior of (S0, D, f, D*) per voxel on a grid, S0 and σ integrated out.

Model (:mod:`ivim_common.model`): S(b) = S0·e^(−bD)·(f·e^(−bD*) + 1 − f), D* in excess of D.
Written with D*ₚ = D + D* it is S = S0·((1 − f)·u + f·v), u = e^(−bD), v = e^(−bD*ₚ), so for
fixed (D, f, D*ₚ) the signal is linear in S0.  With Gaussian noise of unknown σ, a flat prior
on S0 and Jeffreys' prior 1/σ, both integrate out in closed form: with x = (1 − f)·u + f·v,

    p(D, f, D*ₚ | y) ∝ prior(D, f, D*ₚ) · (x·x)^(−1/2) · RSS_min^(−(n_b − 1)/2),
    RSS_min = y·y − (x·y)² / (x·x)        (the residual at the best S0 = x·y / x·x).

(S0 integrated over the real line: x and y are positive, so the best S0 is positive and the
mass at S0 < 0 is negligible; the toolbox's S0 bounds, a device of its least squares, are not
imposed.)  x·y and x·x need only u·y, v·y, u·u, v·v, u·v per (D, D*ₚ) pair, so a grid point
over f costs a handful of flops and no exponential; the power of RSS is taken by repeated
squaring (no log or exp per grid point).

The grid spans (log D, f, log D*ₚ), cell-centred; the prior is a product of three 1-D
densities in those coordinates (:func:`uniform_prior`, :func:`empirical_prior`), times, with
the spatial prior (:mod:`ivim_common.spatial`), one Gaussian per coordinate and voxel, times the
voxel's box lo <= (D, f, D*) <= hi (D* = D*ₚ − D; D's box from the prior, see
:func:`uniform_prior`).  A coarse grid over the whole box locates the posterior; a finer one
over its mean ± ZOOM_SD posterior SD gives the estimates, zoomed again while a posterior SD
is under RESOLVED_SD cells (high SNR).  Point estimates are the prior's (:data:`ESTIMATES`):
posterior means with the uniform prior (on issue 18's phantom, SNR 30, 50, the mean's median
|relative error| was lower than the median's for f, 0.26 vs 0.30 at SNR 30, and D*ₚ, 0.28 vs
0.30, within 0.003 for D), medians with the prior uniform in log D*ₚ (docs/accuracy_priors.md:
bench/bench_priors.py measures mean, median and mode in every box).  SD and the
2.5/97.5 % quantiles are those of the grid posterior, each cell's mass spread evenly over the
cell; D*'s quantiles by bisection of its CDF over the joint of (D, D*ₚ).

Known limit: where the posterior is far narrower than a coarse cell (SNR ~1000) a few voxels
lock onto a wrong stretch of the f-D* ridge (the coarse grid's best cell is not the mode's).  S0: mean and SD exact (the S0 conditional is a Student t
with n_b − 1 degrees of freedom), its interval mean ± 1.96 SD.
"""
import functools
import math
import threading

import numba
import numpy as np

from .. import compiled, model, spatial
from ..compiled import kernel, notice_if_slow

CHUNK_SIZE = 2000             # voxels per chunk of the voxel pool (about 0.1 s each)
GRID_COARSE = (10, 10, 14)    # points over (log D, f, log D*ₚ) in the voxel's whole box
GRID_FINE = (12, 16, 20)      # points over the same axes, around the posterior mass
ZOOM_SD = 4.5                 # the fine grid spans the coarse posterior mean ± this many SD,
ZOOM_MIN_CELLS = 1.5          # and at least this many coarse cells either side;
RESOLVED_SD = 0.5             # zoomed again (a fine grid over a fine one) while a posterior SD
ZOOM_LEVELS = 5               # is under this many cells (high SNR), at most this many grids
RSS_FLOOR = 1e-12             # RSS floor relative to y·y (noiseless data: a finite posterior)
PROB = np.array([0.025, 0.975, 0.5])   # the interval, then the median
PRIOR_D_BOUNDS = model.D_INIT_BOUNDS   # D's support where D varies (see uniform_prior)
TABLE_SIZE = 256              # points of a prior density table
# Ranges of the prior tables, wide enough for any bounds (values outside use the end value).
TABLE_RANGE = ((math.log(1e-5), math.log(1e-1)), (0.0, 1.0), (math.log(1e-5), math.log(1.0)))
BISECT_ITER = 28              # bisection steps of a D* quantile (to 4e-9 of its range)
ESTIMATES = {"mean": 0, "median": 4, "mode": 5}   # point estimates: their rows of the summaries
# The broad prior of a --prior choice (image_options), uniform_prior's keywords, where the box
# is a toolbox preset (2020, 2019: the cord's physiological range, as the original designed
# them) and where it is the user's (the osipi preset, --bounds: a limit, not a belief).  auto
# and spatial: AUTO.
UNIFORM = {"dstar": "linear"}
SCALE_FREE = {"dstar": "log", "f": "falling"}
BROAD = {"uniform": (UNIFORM, UNIFORM), "log": (SCALE_FREE, SCALE_FREE)}
AUTO = (UNIFORM, SCALE_FREE)

_FASTMATH = {"reassoc", "contract", "arcp", "nsz"}   # vectorise reductions, keep NaN/inf rules


# Compiled with the fast-math flags above, without reference counting (see
# :func:`ivim_common.compiled.kernel`): the kernels allocate nothing, the callers hand over the
# scratch.  The entries: _fit_kernel, called from Python, which calls _posterior and _summaries
# through function pointers (numba's first-class functions) rather than linking their code into
# its own: so each of the three is compiled once, on its own, and on the first run two of them
# in parallel (see prepare).  Hence their explicit signatures (C-contiguous arrays).
_kernel = functools.partial(kernel, fastmath=_FASTMATH)
_F8, _I8 = numba.types.float64, numba.types.int64
_VEC, _MAT, _IVEC = numba.types.float64[::1], numba.types.float64[:, ::1], numba.types.int64[::1]
_WS = numba.types.UniTuple(_MAT, 12)        # the scratch (see _scratch)
_POSTERIOR = numba.types.Tuple((_I8,) * 3 + (_F8,) * 6)(_VEC, _VEC, _VEC, _F8, _F8, _IVEC, _VEC, _VEC, _MAT,
                                                        _VEC, _VEC, _WS)
_SUMMARIES = numba.types.void(_I8, _I8, _I8, *(_F8,) * 6, _VEC, _WS, _MAT)
_FIT = numba.types.void(numba.types.FunctionType(_POSTERIOR), numba.types.FunctionType(_SUMMARIES), _VEC,
                        _MAT, _MAT, _MAT, _VEC, _VEC, _IVEC, _IVEC, _VEC, _VEC, _MAT, _MAT, _MAT, _VEC, _WS, _MAT,
                        numba.types.float64[:, :, ::1])


# --- Priors -------------------------------------------------------------------------------------

def _tables(logdens_funcs):
    """Prior tables (3, TABLE_SIZE) of log densities over the TABLE_RANGE of each coordinate."""
    x = [np.linspace(a, b, TABLE_SIZE) for a, b in TABLE_RANGE]
    tab = np.array([func(xi) for func, xi in zip(logdens_funcs, x)], dtype=float)
    return {"start": np.array([a for a, _ in TABLE_RANGE]),
            "step": np.array([(b - a) / (TABLE_SIZE - 1) for a, b in TABLE_RANGE]),
            "logdens": tab}


_IDENTITY = lambda x: x          # noqa: E731  (over log x, uniform in x is a density ∝ x)
_FLAT = np.zeros_like
_SCALES = {"linear": _IDENTITY, "log": _FLAT}
_F_DENSITY = {"flat": _FLAT, "falling": lambda f: np.log(np.clip(1.0 - f, 1e-6, None))}


def uniform_prior(dstar="linear", d="linear", f="flat", d_bounds=PRIOR_D_BOUNDS):
    """Broad prior within each voxel's bounds: uniform in D (``d='linear'``) or log D
    (``'log'``); in D*ₚ (``dstar='linear'``, for fixed D the same as uniform in D*) or in
    log D*ₚ (``'log'``); in f (``f='flat'``) or with a density falling linearly from f = 0
    to f = 1, ∝ 1 − f (``'falling'``, Beta(1, 2): a voxel of blood is not as likely as one of
    tissue); D within ``d_bounds`` (mm²/s) where D varies (None: the voxel's nominal bounds
    of D).

    The toolbox's one-step bounds put D in [0.15e-3, 1.2·Dinit], Dinit from the voxel's own
    high-b signal: a least-squares device, not a prior; with noise, 1.2·Dinit is below the
    true D in a third of the voxels (issue 18's phantom at SNR 30-50), and a posterior
    cut there cannot cover the truth.  The default is the toolbox's range of Dinit instead.

    Returns
    -------
    dict: name, start (3,), step (3,), logdens (3, TABLE_SIZE) over (log D, f, log D*ₚ),
    d_bounds, estimate: the point estimate, the posterior mean where D*ₚ's prior is uniform
    and the median where it is uniform in log D*ₚ (measured, bench/bench_priors.py: with a
    scale-free prior and weak data the posterior of D*ₚ has a long upper tail that drags the
    mean, while the median is that of log D*ₚ too).
    """
    for name, scale in (("dstar", dstar), ("d", d)):
        if scale not in _SCALES:
            raise ValueError(f"{name} must be 'linear' or 'log', not {scale!r}")
    if f not in _F_DENSITY:
        raise ValueError(f"f must be 'flat' or 'falling', not {f!r}")
    prior = _tables((_SCALES[d], _F_DENSITY[f], _SCALES[dstar]))
    prior["name"] = (f"uniform in {'D' if d == 'linear' else 'log D'}"
                     + (", f" if f == "flat" else ", f's density falling as 1 - f,")
                     + f" and {'D*p' if dstar == 'linear' else 'log D*p'} within the bounds"
                     + (f", D in [{d_bounds[0]:g}, {d_bounds[1]:g}]" if d_bounds is not None else ""))
    prior["d_bounds"] = d_bounds
    prior["estimate"] = "mean" if dstar == "linear" else "median"
    return prior


def empirical_prior(params_ls, lo, hi, floor=0.1, d_bounds=PRIOR_D_BOUNDS):
    """Empirical-Bayes prior from a first least-squares pass over the image's voxels.

    Each of log D, f and log D*ₚ gets the kernel density estimate of the least-squares values
    (Silverman's bandwidth on a robust spread, at least 2 % of the coordinate's span in the
    bounds, reflected at the span's ends), mixed with a ``floor`` fraction of the uniform
    prior (:func:`uniform_prior`) over the union of the voxels' bounds, so that no value
    within the bounds is ruled out.  Least-squares estimates are noisier than the truth, so
    this prior is wider than the population: it shrinks voxels towards the image's typical
    values, not onto them (cf. Orton et al., MRM 2014, whose shrinkage prior is a Gaussian in
    transformed coordinates).

    Parameters
    ----------
    params_ls : ndarray (n, 4)
        Least-squares (S0, D, Fivim, Dstar) of the image's voxels (NaN rows ignored).
    lo, hi : ndarray (n, 4)
        Their nominal bounds.
    floor : float
        Weight of the uniform component.
    d_bounds : (float, float) or None
        As :func:`uniform_prior`'s.

    Returns
    -------
    dict as :func:`uniform_prior`'s.
    """
    params_ls = np.asarray(params_ls, dtype=float)
    ok = np.isfinite(params_ls).all(axis=1) & (params_ls[:, 1] > 0)
    if ok.sum() < 10:
        raise ValueError("an empirical prior needs at least 10 fitted voxels")
    p, lo, hi = params_ls[ok], np.asarray(lo, float)[ok], np.array(hi, float)[ok]
    lo, hi = prior_box(lo, hi, {"d_bounds": d_bounds})
    values = (np.log(p[:, 1]), p[:, 2], np.log(p[:, 1] + p[:, 3]))
    spans = ((np.log(lo[:, 1].min()), np.log(hi[:, 1].max())), (lo[:, 2].min(), hi[:, 2].max()),
             (np.log((lo[:, 1] + lo[:, 3]).min()), np.log((hi[:, 1] + hi[:, 3]).max())))
    funcs = [_kde(v, span, floor, uni) for v, span, uni in zip(values, spans, (_IDENTITY, _FLAT, _IDENTITY))]
    prior = _tables(funcs)
    prior["name"] = f"empirical: KDE of {int(ok.sum())} least-squares fits, uniform floor {floor:g}"
    prior["d_bounds"] = d_bounds
    prior["estimate"] = "mean"
    return prior


def prior_box(lo, hi, prior):
    """The bounds (n, 4) the posterior lives in: lo, hi with D's replaced by the prior's
    d_bounds where D varies (lo < hi) and the prior has d_bounds."""
    lo, hi = np.array(lo, dtype=float), np.array(hi, dtype=float)
    if prior.get("d_bounds") is not None:
        free = lo[:, 1] < hi[:, 1]
        lo[free, 1], hi[free, 1] = prior["d_bounds"]
    return lo, hi


def _kde(values, span, floor, uniform_logdens):
    """The function x -> log((1 − floor)·KDE(x) + floor·uniform(x)), both densities on span."""
    a, b = span
    v = np.clip(values, a, b)
    q25, q75 = np.percentile(v, [25, 75])
    spread = min(v.std(), (q75 - q25) / 1.349) or v.std()
    bw = max(0.9 * spread * v.size ** -0.2, 0.02 * (b - a), 1e-12)
    hist, edges = np.histogram(v, bins=256, range=(a, b if b > a else a + 1e-12))
    centres = 0.5 * (edges[1:] + edges[:-1])
    fine = np.linspace(a, b, 1024)

    def kde(x):      # reflected at both ends, so the density does not fall off at the bounds
        return sum(np.exp(-0.5 * ((xr[:, None] - centres) / bw) ** 2) @ hist
                   for xr in (x, 2 * a - x, 2 * b - x))

    def uniform(x):
        return np.exp(uniform_logdens(x) - uniform_logdens(np.array([b]))[0])

    kde_norm, uni_norm = _integral(kde(fine), fine), _integral(uniform(fine), fine)

    def logdens(x):     # outside the span (no voxel's box goes there) the value at its end
        x = np.clip(x, a, b)
        return np.log((1 - floor) * kde(x) / kde_norm + floor * uniform(x) / uni_norm)
    return logdens


def _integral(y, x):
    return float(np.sum(0.5 * (y[1:] + y[:-1]) * np.diff(x)))


# --- The grid posterior (compiled) --------------------------------------------------------------

@_kernel
def _axis(a, b, n, out):
    """Centres of n equal cells over [a, b] into out (one point if b <= a); (count, width)."""
    if not b > a:
        out[0] = a
        return 1, 0.0
    h = (b - a) / n
    for i in range(n):
        out[i] = a + (i + 0.5) * h
    return n, h


@_kernel
def _prior_factors(coord, n, start, step, logdens, mu, prec, out):
    """exp(log density) at coord[:n], by linear interpolation in its table logdens (whose
    first point is at start, spaced by step), times the Gaussian exp(−prec·(coord − mu)²/2)
    (prec 0: none), scaled so that the largest is 1."""
    last = logdens.size - 1
    top = -np.inf
    for i in range(n):
        t = min(max((coord[i] - start) / step, 0.0), float(last))
        j = min(int(t), last - 1)
        r = t - j
        out[i] = logdens[j] * (1.0 - r) + logdens[j + 1] * r - 0.5 * prec * (coord[i] - mu) ** 2
        top = max(top, out[i])
    for i in range(n):
        out[i] = math.exp(out[i] - top)


@_kernel
def _dots(b, y, value, n, e, yd, dd):
    """e[i] = exp(-b·value[i]); yd[i] = e[i]·y, dd[i] = e[i]·e[i]."""
    for i in range(n):
        sy = 0.0
        ss = 0.0
        for k in range(b.size):
            t = math.exp(-b[k] * value[i])
            e[i, k] = t
            sy += t * y[k]
            ss += t * t
        yd[i] = sy
        dd[i] = ss


@_kernel(entry=True, pointer=True)
def _posterior(b, y, box, dstar_lo, dstar_hi, sizes, start, step, logdens, mu, prec, ws):
    """Grid posterior of one voxel over box = (log D, f, log D*ₚ) ranges (6,), its prior the
    tables times the Gaussians of mean mu (3,) and precision prec (3,) on those coordinates.

    Fills ws's g (3, ·) grid coordinates, marg (3, ·) marginal masses and m2 (n_d, n_p) the
    joint masses of (D, D*ₚ).  Returns (n_d, n_f, n_p, h_d, h_f, h_p, total, sum w·S0,
    sum w·E[S0² | grid point]); masses are unnormalised (total is their sum).
    """
    g, val, pri, u, v, dots, uv, pm, flat, marg, m2, prefix = ws
    nb = b.size
    yy = 0.0
    for k in range(nb):
        yy += y[k] * y[k]
    nd, hd = _axis(box[0], box[1], sizes[0], g[0])
    nf, hf = _axis(box[2], box[3], sizes[1], g[1])
    npp, hp = _axis(box[4], box[5], sizes[2], g[2])
    for i in range(nd):
        val[0, i] = math.exp(g[0, i])
    for j in range(npp):
        val[2, j] = math.exp(g[2, j])
    # a row of the tables each: a constant row number would make numba compile a copy per value
    _prior_factors(g[0], nd, start[0], step[0], logdens[0], mu[0], prec[0], pri[0])
    _prior_factors(g[1], nf, start[1], step[1], logdens[1], mu[1], prec[1], pri[1])
    _prior_factors(g[2], npp, start[2], step[2], logdens[2], mu[2], prec[2], pri[2])
    _dots(b, y, val[0], nd, u, dots[0], dots[1])
    _dots(b, y, val[2], npp, v, dots[2], dots[3])
    for i in range(nd):
        for j in range(npp):
            dstar = val[2, j] - val[0, i]
            pm[i, j] = pri[0, i] * pri[2, j] if dstar_lo <= dstar <= dstar_hi else 0.0
            s = 0.0
            for k in range(nb):
                s += u[i, k] * v[j, k]
            uv[i, j] = s

    # RSS at the best S0 of every grid point (inf outside the box)
    rss, xxs, s0, q, res = flat[0], flat[1], flat[2], flat[3], flat[4]
    floor = RSS_FLOOR * yy
    rmin = np.inf
    for i in range(nd):
        for j in range(npp):
            base = (i * npp + j) * nf
            if pm[i, j] == 0.0:
                for k in range(nf):
                    rss[base + k] = np.inf
                    xxs[base + k] = 1.0
                    s0[base + k] = 0.0
                continue
            uy, uu, vy, vv, uvij = dots[0, i], dots[1, i], dots[2, j], dots[3, j], uv[i, j]
            for k in range(nf):
                f = g[1, k]
                f1 = 1.0 - f
                xy = f1 * uy + f * vy
                xx = f1 * f1 * uu + 2.0 * f * f1 * uvij + f * f * vv
                r = max(yy - xy * xy / xx, floor)
                rss[base + k] = r
                xxs[base + k] = xx
                s0[base + k] = xy / xx
                rmin = min(rmin, r)

    # weight (x·x)^(-1/2)·(RSS_min / RSS)^((n_b - 1)/2): the power by repeated squaring
    n_tot = nd * npp * nf
    half = (nb - 1) % 2 == 1
    for t in range(n_tot):
        q[t] = rmin / rss[t]
        res[t] = math.sqrt((q[t] if half else 1.0) / xxs[t])
    e = (nb - 1) // 2
    while e > 0:
        if e & 1:
            for t in range(n_tot):
                res[t] *= q[t]
        e >>= 1
        if e > 0:
            for t in range(n_tot):
                q[t] *= q[t]

    for a in range(3):
        for i in range(marg.shape[1]):
            marg[a, i] = 0.0
    total = 0.0
    s0_sum = 0.0
    s0_sq = 0.0
    t_var = 1.0 / max(nb - 3, 1)       # Var(S0 | grid point) = RSS / ((n_b - 3)·x·x), Student t
    for i in range(nd):
        for j in range(npp):
            p = pm[i, j]
            wij = 0.0
            if p != 0.0:
                base = (i * npp + j) * nf
                for k in range(nf):
                    w = res[base + k] * pri[1, k] * p
                    wij += w
                    marg[1, k] += w
                    s = s0[base + k]
                    s0_sum += w * s
                    s0_sq += w * (s * s + t_var * rss[base + k] / xxs[base + k])
            m2[i, j] = wij
            marg[0, i] += wij
            marg[2, j] += wij
            total += wij
    return nd, nf, npp, hd, hf, hp, total, s0_sum, s0_sq


@_kernel
def _coord_stats(g, m, n, total):
    """Posterior mean and SD of a grid coordinate from its marginal masses."""
    mean = 0.0
    for i in range(n):
        mean += m[i] * g[i]
    mean /= total
    var = 0.0
    for i in range(n):
        var += m[i] * (g[i] - mean) ** 2
    return mean, math.sqrt(var / total)


@_kernel
def _axis_quantile(g, m, n, h, total, p):
    """p-quantile of a grid coordinate, each cell's mass spread evenly over the cell."""
    if n == 1:
        return g[0]
    target = p * total
    cum = 0.0
    for c in range(n):
        if m[c] > 0.0 and cum + m[c] >= target:
            return g[c] - 0.5 * h + h * (target - cum) / m[c]
        cum += m[c]
    return g[n - 1] + 0.5 * h


@_kernel
def _dstar_cdf(t, val, nd, gp, npp, hp, m2, prefix):
    """Posterior mass of D* = D*ₚ − D <= t (unnormalised), D*ₚ spread evenly over log cells."""
    c_sum = 0.0
    for i in range(nd):
        x = t + val[0, i]
        if x <= 0.0:
            continue
        if hp == 0.0:
            c_sum += prefix[i, npp] if x >= val[2, 0] else 0.0
            continue
        c = (math.log(x) - (gp[0] - 0.5 * hp)) / hp
        if c >= npp:
            c_sum += prefix[i, npp]
        elif c > 0.0:
            ci = int(c)
            c_sum += prefix[i, ci] + m2[i, ci] * (c - ci)
    return c_sum


@_kernel
def _dstar_quantile(p, total, val, nd, gp, npp, hp, m2, prefix):
    lo_t = math.exp(gp[0] - 0.5 * hp) - val[0, nd - 1] - 1e-12
    hi_t = math.exp(gp[npp - 1] + 0.5 * hp) - val[0, 0]
    target = p * total
    for _ in range(BISECT_ITER):
        mid = 0.5 * (lo_t + hi_t)
        if _dstar_cdf(mid, val, nd, gp, npp, hp, m2, prefix) < target:
            lo_t = mid
        else:
            hi_t = mid
    return 0.5 * (lo_t + hi_t)


@_kernel(entry=True)
def _fit_kernel(posterior, summaries, b, signal, lo, hi, p_lo, p_hi, coarse, fine, start, step, logdens, mu, prec,
                prob, ws, boxes, out):
    """Posterior summaries of every voxel into out (n, 6, 5) (see _summaries), D*ₚ within
    [p_lo, p_hi] (n,), each voxel's prior times its Gaussians mu, prec (n, 3); NaN where a
    voxel's signal or bounds are not usable.  Scratch: ws (see _posterior), boxes (2, 6).
    posterior, summaries: _posterior and _summaries (see _ready_fit_kernel)."""
    g, marg = ws[0], ws[9]
    box, box2 = boxes[0], boxes[1]
    for n in range(signal.shape[0]):
        y = signal[n]
        ok = True
        for k in range(y.size):
            if not (y[k] > 0.0 and y[k] < np.inf):
                ok = False
        for a in range(4):
            if not (lo[n, a] <= hi[n, a]):
                ok = False
        if not (ok and lo[n, 1] > 0.0 and p_lo[n] > 0.0 and p_lo[n] <= p_hi[n]):
            out[n] = np.nan
            continue
        box[0], box[1] = math.log(lo[n, 1]), math.log(hi[n, 1])
        box[2], box[3] = lo[n, 2], hi[n, 2]
        box[4], box[5] = math.log(p_lo[n]), math.log(p_hi[n])
        r = posterior(b, y, box, lo[n, 3], hi[n, 3], coarse, start, step, logdens, mu[n], prec[n], ws)
        for _ in range(ZOOM_LEVELS):
            if not (r[6] > 0.0 and r[6] < np.inf):
                break
            resolved = True
            for a in range(3):
                box2[2 * a], box2[2 * a + 1] = box[2 * a], box[2 * a + 1]
                count, width = (r[0], r[1], r[2])[a], (r[3], r[4], r[5])[a]
                if count > 1:
                    mean, sd = _coord_stats(g[a], marg[a], count, r[6])
                    resolved = resolved and sd >= RESOLVED_SD * width
                    halfw = max(ZOOM_SD * sd, ZOOM_MIN_CELLS * width)
                    box2[2 * a] = max(box[2 * a], mean - halfw)
                    box2[2 * a + 1] = min(box[2 * a + 1], mean + halfw)
            if resolved and _ > 0:
                break
            r = posterior(b, y, box2, lo[n, 3], hi[n, 3], fine, start, step, logdens, mu[n], prec[n], ws)
        nd, nf, npp, hd, hf, hp, total, s0_sum, s0_sq = r
        if not (total > 0.0 and total < np.inf):
            out[n] = np.nan
            continue
        summaries(nd, nf, npp, hd, hf, hp, total, s0_sum, s0_sq, prob, ws, out[n])


@_kernel(entry=True, pointer=True)
def _summaries(nd, nf, npp, hd, hf, hp, total, s0_sum, s0_sq, prob, ws, o):
    """o (6, 5): mean, SD, the quantiles prob (2.5 %, 97.5 %, median) and the mode of (S0, D,
    f, D*, D*ₚ) from a fine-grid posterior.  The mode is the centre of the marginal's fullest
    cell (in log D, f, log D*ₚ); D*'s median and mode are D*ₚ's less D's, so that they add up."""
    g, val, marg, m2, prefix = ws[0], ws[1], ws[9], ws[10], ws[11]
    s0_mean = s0_sum / total
    s0_sd = math.sqrt(max(s0_sq / total - s0_mean * s0_mean, 0.0))
    o[0, 0], o[1, 0], o[2, 0], o[3, 0] = s0_mean, s0_sd, s0_mean - 1.959964 * s0_sd, s0_mean + 1.959964 * s0_sd
    o[4, 0] = o[5, 0] = s0_mean
    # D, f and D*ₚ: moments in natural units, quantiles along their axes
    for a, col, n, h in ((0, 1, nd, hd), (1, 2, nf, hf), (2, 4, npp, hp)):
        m1 = 0.0
        m2s = 0.0
        for i in range(n):
            m1 += marg[a, i] * (g[1, i] if a == 1 else val[a, i])
        m1 /= total
        for i in range(n):
            x = g[1, i] if a == 1 else val[a, i]
            m2s += marg[a, i] * (x - m1) ** 2
        o[0, col] = m1
        o[1, col] = math.sqrt(m2s / total)
        top = 0
        for i in range(n):
            if marg[a, i] > marg[a, top]:
                top = i
        o[5, col] = g[1, top] if a == 1 else val[a, top]
        for qi in range(prob.size):
            x = _axis_quantile(g[a], marg[a], n, h, total, prob[qi])
            o[2 + qi, col] = x if a == 1 else math.exp(x)
    # D* = D*ₚ − D: moments from the joint of (D, D*ₚ), quantiles by bisection of its CDF
    m1 = 0.0
    m2s = 0.0
    for i in range(nd):
        prefix[i, 0] = 0.0
        for j in range(npp):
            m1 += m2[i, j] * (val[2, j] - val[0, i])
            prefix[i, j + 1] = prefix[i, j] + m2[i, j]
    m1 /= total
    for i in range(nd):
        for j in range(npp):
            m2s += m2[i, j] * (val[2, j] - val[0, i] - m1) ** 2
    o[0, 3] = m1
    o[1, 3] = math.sqrt(m2s / total)
    for qi in range(2):
        o[2 + qi, 3] = _dstar_quantile(prob[qi], total, val, nd, g[2], npp, hp, m2, prefix)
    o[4, 3] = o[4, 4] - o[4, 1]
    o[5, 3] = o[5, 4] - o[5, 1]


# --- The engine's interface ---------------------------------------------------------------------

def _scratch(nb, coarse, fine):
    """Work arrays of the kernels, sized for the larger grid (see _posterior for their use)."""
    n = max(max(coarse), max(fine))
    n_tot = max(int(np.prod(coarse)), int(np.prod(fine)))
    return (np.empty((3, n)), np.empty((3, n)), np.empty((3, n)), np.empty((n, nb)), np.empty((n, nb)),
            np.empty((4, n)), np.empty((n, n)), np.empty((n, n)), np.empty((5, n_tot)), np.empty((3, n)),
            np.empty((n, n)), np.empty((n, n + 1)))


def posterior_summaries(bvals, signal, lo, hi, prior, coarse=GRID_COARSE, fine=GRID_FINE, pool=None,
                        gauss=None):
    """Posterior summaries within the bounds lo, hi (n, 4) as given (no d_bounds applied), and
    D*ₚ = D + D* within ``pool`` = (lower, upper) where given; ``gauss`` = (mean, precision),
    each (n, 3) over (log D, f, log D*ₚ), multiplies each voxel's prior by those Gaussians.

    Returns
    -------
    ndarray (n, 6, 5): posterior mean, SD, 2.5 % and 97.5 % quantiles, median and mode (axis
    1, see :data:`ESTIMATES`) of S0, D, f, D* and D*ₚ = D + D* (axis 2).
    """
    out = np.empty((np.atleast_2d(signal).shape[0], 6, 5))
    _ready_fit_kernel()(_posterior, _summaries, *_kernel_args(bvals, signal, lo, hi, prior, coarse, fine, pool, gauss),
                        out)
    return out


_FIT_LOCK = threading.Lock()     # threads that fit at once (the GUI's) make the kernels ready once
_fit_ready = False


def _ready_fit_kernel():
    """_fit_kernel, compiled (or loaded) for its signature _FIT alone, and no other: given the
    dispatchers _posterior and _summaries, numba would otherwise compile it for their own types,
    with their code linked in.  Those two are compiled (or loaded) first, for their signatures:
    numba before 0.68 would otherwise compile them as it converts them to pointers, under a
    cache key of their argument types alone, and miss what the first run cached."""
    global _fit_ready
    with _FIT_LOCK:
        if not _fit_ready:
            compiled.compile_for(_posterior, signature=_POSTERIOR)
            compiled.compile_for(_summaries, signature=_SUMMARIES)
            compiled.compile_for(_fit_kernel, signature=_FIT)
            _fit_kernel.disable_compile()
            _fit_ready = True
    return _fit_kernel


def _kernel_args(bvals, signal, lo, hi, prior, coarse, fine, pool, gauss):
    """The arguments of _fit_kernel but the two kernels and its output (see
    posterior_summaries): C-contiguous and writable, as its signature _FIT has them (numba
    types a read-only array otherwise); copies only where an array is not so already."""
    def c(a, dtype=float):
        return np.require(a, dtype, ["C", "W"])

    b, signal = c(bvals), c(np.atleast_2d(signal))
    n = signal.shape[0]
    mu, prec = (np.zeros((n, 3)), np.zeros((n, 3))) if gauss is None else gauss
    lo, hi = c(lo), c(hi)
    p_lo, p_hi = lo[:, 1] + lo[:, 3], hi[:, 1] + hi[:, 3]
    if pool is not None:
        p_lo, p_hi = np.maximum(p_lo, pool[0]), np.minimum(p_hi, pool[1])
    return (b, signal, lo, hi, c(p_lo), c(p_hi), c(coarse, np.int64), c(fine, np.int64), c(prior["start"]),
            c(prior["step"]), c(prior["logdens"]), c(mu), c(prec), c(PROB), _scratch(b.size, coarse, fine),
            np.empty((2, 6)))


def fit(bvals, signal, init, lo, hi, vary, seeds, prior=None, limits=None, estimate=None, neighbours=None):
    """Posterior of (S0, D, f, D*) per voxel; the engine draws nothing (seeds are unused).

    Parameters
    ----------
    bvals : ndarray (n_b,)
        b-values in s/mm² (at least 4).
    signal : ndarray (n, n_b)
    init, lo, hi : ndarray (n, 4)
        Start values and nominal bounds in the order of model.PARAM_NAMES; parameters not in
        ``vary`` are held at ``init``.
    vary : ndarray of bool (4,)
    seeds : None
        Unused (the grid posterior is deterministic).
    prior : dict, optional
        :func:`uniform_prior` (default) or :func:`empirical_prior`; its ``d_bounds``, if
        any, replace the nominal bounds of D where D varies, unless ``limits`` is given.
    limits : dict, optional
        The user's bounds are in force (the 'osipi' preset or --bounds,
        :func:`ivim_common.model.refinement_limits`): the posterior lives in lo, hi as given,
        and D*ₚ within ``limits["pool"]`` where that is set.
    estimate : {'mean', 'median', 'mode'}, optional
        The point estimate (params) of D, f and D*ₚ (D* is D*ₚ's less D's); default the
        prior's (see :func:`uniform_prior`).
    neighbours : ndarray of int (n, 6), optional
        The rows' neighbours (:func:`ivim_common.spatial.neighbours`): the posterior under the
        spatial prior (:mod:`ivim_common.spatial`) on top of ``prior``.

    Returns
    -------
    dict of ndarray (n, 4): params (the point estimates), sd (posterior SD), ci_low, ci_high
    (2.5 and 97.5 % posterior quantiles; NaN for a held parameter); NaN rows where a voxel
    failed; pool (n, 3): the SD and quantiles of D*ₚ = D + D*; lo, hi (n, 4): the box the
    posterior lives in (S0 unbounded).
    """
    prior = uniform_prior() if prior is None else prior
    init = np.asarray(init, dtype=float)
    fixed = ~np.asarray(vary, dtype=bool)
    lo = np.where(fixed, init, lo)
    hi = np.where(fixed, init, hi)
    pool = None
    if limits is None:
        lo, hi = prior_box(lo, hi, prior)
    elif limits.get("pool") is not None:
        pool = limits["pool"][:2]
    if np.asarray(bvals).size < 4:
        raise ValueError("the Bayesian engine needs at least 4 b-values")
    signal = np.atleast_2d(signal)

    def voxelwise(rows_signal, gauss):
        return posterior_summaries(bvals, rows_signal, lo, hi, prior, pool=pool, gauss=gauss)

    if neighbours is None:
        summaries = voxelwise(signal, None)
    else:
        summaries = spatial.posterior(signal, voxelwise, neighbours)
    summaries[:, 1:4, :4][:, :, fixed] = np.nan     # a held parameter has no uncertainty
    out = summaries[:, :, :4]
    params = out[:, ESTIMATES[estimate or prior["estimate"]]].copy()
    params[:, 3] = np.clip(params[:, 3], lo[:, 3], hi[:, 3])     # D*ₚ's less D's: inside D*'s box
    box_lo, box_hi = lo.copy(), hi.copy()            # the posterior's box: S0 is not bounded
    box_lo[:, 0], box_hi[:, 0] = -np.inf, np.inf
    return {"params": params, "sd": out[:, 1], "ci_low": out[:, 2], "ci_high": out[:, 3],
            "pool": summaries[:, 1:4, 4], "lo": box_lo, "hi": box_hi}


_ready = False      # compiled or loaded in this process
HELPER_TASKS = ("_compile_fit_kernel",)    # what a helper process compiles on the first run (see prepare)
COMPILE_NOTICE = ("ivim-toolbox: compiling the Bayesian engine, some 3 s (the first run of an "
                  "installation; it is cached for later runs where it can be written)")


def _example():
    """A voxel's data and box, for which prepare compiles the kernels (what fit does with them)."""
    b = np.array([0.0, 50.0, 400.0, 800.0])
    y = 1000.0 * np.exp(-b * 1e-3)[None]
    lo, hi = np.array([[500.0, 0.2e-3, 0.0, 2e-3]]), np.array([[1500.0, 3e-3, 0.3, 50e-3]])
    return b, y, lo, hi


def compiles_here():
    """Whether this process compiles the kernels (numba's cache lacks them) and can cache them
    (see :func:`ivim_common.compiled.prepare`)."""
    with _FIT_LOCK:     # where it has to compile _fit_kernel to know: not once disabled
        return compiled.compiles_here(_fit_kernel, signature=_FIT)


def _compile_fit_kernel():
    """The helper process's share of the first compile, into numba's cache: the posterior's
    summaries, and the kernel that calls them and the posterior."""
    compiled.compile_for(_summaries, signature=_SUMMARIES)
    compiled.compile_for(_fit_kernel, signature=_FIT)


def prepare(announce=True, helper=None):
    """Compile the kernels (the first run of an installation) or load them from the cache,
    once per process, saying so on stderr if ``announce`` and that takes a while.  With a
    ``helper`` (see :func:`ivim_common.compiled.prepare`) compiling the rest meanwhile,
    compile the grid posterior here, then load the rest from the cache."""
    global _ready
    if _ready:
        return
    b, y, lo, hi = _example()
    with notice_if_slow(announce, COMPILE_NOTICE):
        compiled.compile_for(_posterior, signature=_POSTERIOR)
        if helper:
            helper.wait(f"{__name__}:_compile_fit_kernel")
        _ready_fit_kernel()
        fit(b, y, 0.5 * (lo + hi), lo, hi, np.ones(4, bool), np.zeros((1, 2), np.uint32))
    _ready = True


def image_options(ivim_model, signal, jobs, volume=None, prior="auto"):
    """The prior of a fit (see :mod:`ivim_common.engines` and its OPTIONS): ``auto``, ``uniform``
    or ``log`` (:func:`uniform_prior`, its keywords from :data:`BROAD`), ``empirical``, from a
    first least-squares pass of the fast engine over the voxels (:func:`empirical_prior`), or
    ``spatial``, auto's times the spatial prior (:mod:`ivim_common.spatial`).

    ``volume`` = (shape, flat indices of the rows of ``signal``) where the voxels are those of
    a volume (IvimModel.fit), else None.  Returns the options of every chunk (with
    ``neighbours`` the fit is one chunk) and the sidecar's record."""
    from . import OPTIONS

    choices = OPTIONS["bayes"]["prior"][0]
    if prior not in choices:
        raise ValueError(f"unknown prior {prior!r} (choose from {', '.join(choices)})")
    if prior == "empirical":
        conv = ivim_model.dstar_convention      # the same model (its class: the API is above the engines)
        ls = type(ivim_model)(ivim_model.bvals, approach=ivim_model.approach, bounds_version=ivim_model.bounds_version,
                              engine="fast", bounds=ivim_model.bounds, dstar_convention=conv,
                              bval_threshold=ivim_model.bval_threshold).fit_voxels(signal, jobs=jobs)
        ls["Dstar"] = model.excess_dstar(ls["Dstar"], ls["D"], conv)
        params = np.column_stack([ls[name] for name in model.PARAM_NAMES])
        ok = np.isfinite(params).all(axis=1)
        _, lo, hi, _ = model.voxel_bounds(ivim_model.bvals, signal[ok], ivim_model.approach,
                                          ivim_model.bounds_version, ivim_model.bounds, conv, ivim_model.bval_threshold)
        table = empirical_prior(params[ok], lo, hi)
    else:
        users_box = model.refinement_limits(ivim_model.approach, ivim_model.bounds_version, ivim_model.bounds,
                                            ivim_model.dstar_convention) is not None
        table = uniform_prior(**BROAD.get(prior, AUTO)[users_box])
    options = {"prior": table}
    record = {"prior": prior, "prior_description": table["name"], "point_estimate": table["estimate"]}
    if prior == "spatial":
        shape, ids = volume if volume is not None else (None, ())
        spatial.check_volume(shape, len(ids))
        options["neighbours"] = spatial.neighbours(shape, ids)
        record["prior_description"] += (
            f"; times the spatial prior (ivim_common.spatial): a Gaussian mixture of tissues estimated from the "
            f"image and an edge-preserving Markov random field on the 6-neighbourhood (coupling {spatial.COUPLING:g}, "
            f"{spatial.POOL_STEPS} rounds of pooled neighbours, {spatial.SWEEPS} conditional update(s))")
    return options, record
