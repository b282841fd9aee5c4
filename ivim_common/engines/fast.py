"""The fast engine: the toolbox's least-squares problem, solved exactly and compiled by numba.

Variable projection: for fixed (D, D*) the signal is linear in the amplitudes a = S0·f and
c = S0·(1 - f), and the bounds on S0 and f are linear constraints on them, so each point of a
(D, D*) grid costs a closed-form 2-variable constrained least squares.  Four points of each
voxel's grid seed a box-constrained Newton (Levenberg-Marquardt damped, exact Hessian, so large
residuals still converge fast; each trial's S0 and f solved exactly the same way) in the
nominal box; the lowest result is refined in its ±5 % box.

The engine is compiled by numba, voxel by voxel: a voxel's work is branchy (grid minima,
active bounds, a few candidates, each converging at its own pace), which numpy could only run
as masked whole-array passes (bench/bench_engines.py measures it).  The compiled code is cached
(see :func:`ivim_common.compiled.kernel`): only the first run of an installation compiles it.
"""
import numpy as np

from .. import compiled, model
from ..compiled import exp, kernel, notice_if_slow

CHUNK_SIZE = 5000    # voxels: well under a second of work
IN_PROCESS_VOXELS = 40_000   # a job this small costs less than starting workers (bench/bench_small_job.py)

GRID_D = 12          # points over D in each voxel's box (one-step)
GRID_DSTAR = 20      # points over D* in each voxel's box
STEP2_TIE = 1e-6     # step-2 candidates this close (relative RSS) to the lowest are ties
MAX_ITER = 100       # Newton iterations per start
RTOL = 1e-11         # Newton stops when an undamped step changes the RSS by less (relative)

# The kernels below allocate nothing (fit_fast hands them their scratch, see _scratch): they are
# compiled without reference counting (compiled.kernel).  The entries are those called from
# Python, and _grid, which a helper process compiles on the first run (see prepare).


@kernel
def _clip(x, lo, hi):
    """x clipped to [lo, hi] (NaN stays NaN, as numpy.clip)."""
    if x < lo:
        return lo
    if x > hi:
        return hi
    return x


@kernel
def _amplitudes(g11, g12, g22, h1, h2, yy, s_lo, s_hi, f_lo, f_hi):
    """Exact best (S0, f) for y ≈ S0·f·x1 + S0·(1-f)·x2, S0 in [s_lo, s_hi], f in [f_lo, f_hi].

    (g11, g12, g22, h1, h2) = (x1·x1, x1·x2, x2·x2, x1·y, x2·y), yy = y·y.  The feasible set
    is a quadrilateral in (S0·f, S0·(1-f)), so the minimum is the unconstrained one when
    feasible, else the best point of one of its four edges, each a 1-D least squares.

    Returns
    -------
    s0, f, rss, rss_face : float
        The minimum, and the best RSS on the edge f = f_hi.
    """
    hu = f_hi * h1 + (1 - f_hi) * h2        # f on a bound: S0 = (h·u)/(u·Gu), u = (f, 1-f)
    uu = f_hi * f_hi * g11 + 2 * f_hi * (1 - f_hi) * g12 + (1 - f_hi) ** 2 * g22
    s_face = _clip(hu / uu, s_lo, s_hi)
    face = yy - s_face * (2 * hu - s_face * uu)
    det = g11 * g22 - g12 * g12
    if det > 1e-12 * g11 * g22:
        a = (g22 * h1 - g12 * h2) / det
        s_free = a + (g11 * h2 - g12 * h1) / det
        f_free = a / s_free
        if s_lo <= s_free <= s_hi and f_lo <= f_free <= f_hi:   # a convex problem: the minimum
            return s_free, f_free, yy - a * h1 - (s_free - a) * h2, face
    best_s, best_f, best = s_face, f_hi, face
    hu = f_lo * h1 + (1 - f_lo) * h2
    uu = f_lo * f_lo * g11 + 2 * f_lo * (1 - f_lo) * g12 + (1 - f_lo) ** 2 * g22
    s0 = _clip(hu / uu, s_lo, s_hi)
    r = yy - s0 * (2 * hu - s0 * uu)
    if r < best:
        best_s, best_f, best = s0, f_lo, r
    hd, gd = h1 - h2, g12 - g22
    dd = g11 - g12 - gd                      # |x1 - x2|²
    for s0 in (s_lo, s_hi):                  # S0 on a bound: f is a 1-D least squares
        lin = hd - s0 * gd
        f = _clip(lin / (s0 * dd), f_lo, f_hi)
        r = yy - s0 * (2 * h2 - s0 * g22) - f * s0 * (2 * lin - f * s0 * dd)
        if r < best:
            best_s, best_f, best = s0, f, r
    return best_s, best_f, best, face


@kernel
def _grid_row(g11, g12, g22, h1, h2, yy, s_lo, s_hi, f_lo, f_hi, rss, face):
    """:func:`_amplitudes`' minimum RSS and face RSS along one row of the grid, written without
    branches so that the compiler runs several grid points at once (SIMD)."""
    for j in range(g11.size):
        a11, a12, b1 = g11[j], g12[j], h1[j]
        hu = f_hi * b1 + (1 - f_hi) * h2
        uu = f_hi * f_hi * a11 + 2 * f_hi * (1 - f_hi) * a12 + (1 - f_hi) ** 2 * g22
        s0 = min(max(hu / uu, s_lo), s_hi)
        face[j] = yy - s0 * (2 * hu - s0 * uu)
        hu = f_lo * b1 + (1 - f_lo) * h2
        uu = f_lo * f_lo * a11 + 2 * f_lo * (1 - f_lo) * a12 + (1 - f_lo) ** 2 * g22
        s0 = min(max(hu / uu, s_lo), s_hi)
        best = min(face[j], yy - s0 * (2 * hu - s0 * uu))
        hd, gd = b1 - h2, a12 - g22
        dd = a11 - a12 - gd
        for s0 in (s_lo, s_hi):
            lin = hd - s0 * gd
            f = min(max(lin / (s0 * dd), f_lo), f_hi)
            best = min(best, yy - s0 * (2 * h2 - s0 * g22) - f * s0 * (2 * lin - f * s0 * dd))
        det = a11 * g22 - a12 * a12
        a = (g22 * b1 - a12 * h2) / det
        s_free = a + (a11 * h2 - a12 * b1) / det
        f_free = a / s_free
        inside = ((det > 1e-12 * a11 * g22) & (s_free >= s_lo) & (s_free <= s_hi)
                  & (f_free >= f_lo) & (f_free <= f_hi))
        rss[j] = min(best, yy - a * b1 - (s_free - a) * h2 if inside else np.inf)


@kernel
def _local_min(rss, i, j):
    """True where no value among the 8 neighbours of rss[i, j] is lower (nor NaN)."""
    r = rss[i, j]
    for ii in range(max(i - 1, 0), min(i + 2, rss.shape[0])):
        for jj in range(max(j - 1, 0), min(j + 2, rss.shape[1])):
            if not r <= rss[ii, jj]:
                return False
    return True


@kernel(entry=True)
def _grid(b, y, lo, hi, t_d, t_s, starts, ws):
    """(D, D*) of four starting points from a geometric (D, D*) grid over the box, amplitudes
    solved exactly: the two lowest local minima of the grid (the same point twice where it has
    one), and the best grid points on the faces f = f_hi and D* = D*_hi.  Writes starts (4, 2).

    ``t_d``, ``t_s``: the grid's positions in [0, 1] (geometric) along D and D*; ``ws``:
    scratch of size (nd + ns)·(nb + 1) + (2·nd + 3)·ns."""
    nb, nd, ns = b.size, t_d.size, t_s.size
    m = nd + ns
    pos = ws[:m]                             # D, then D*
    e = ws[m:m * (nb + 1)].reshape(nb, m)    # row k: exp(-b·D) over D, then exp(-b·D*) over D*
    grid = ws[m * (nb + 1):m * (nb + 1) + 2 * nd * ns].reshape(2, nd, ns)
    rss, face = grid[0], grid[1]
    sums = ws[m * (nb + 1) + 2 * nd * ns:m * (nb + 1) + (2 * nd + 3) * ns].reshape(3, ns)
    g11, g12, h1 = sums[0], sums[1], sums[2]
    ld, ls = np.log(hi[1] / lo[1]), np.log(hi[3] / lo[3])
    for i in range(nd):
        pos[i] = lo[1] * exp(t_d[i] * ld)
    for j in range(ns):
        pos[nd + j] = lo[3] * exp(t_s[j] * ls)
    for k in range(nb):
        for i in range(m):
            e[k, i] = exp(-b[k] * pos[i])
    yy = 0.0
    for k in range(nb):
        yy += y[k] * y[k]
    for i in range(nd):
        g22 = h2 = 0.0
        sums[:] = 0.0
        for k in range(nb):
            ed = e[k, i]
            e2, ey = ed * ed, ed * y[k]
            g22 += e2
            h2 += ey
            for j in range(ns):
                ep = e[k, nd + j]
                q = e2 * ep
                g11[j] += q * ep
                g12[j] += q
                h1[j] += ey * ep
        _grid_row(g11, g12, g22, h1, h2, yy, lo[0], hi[0], lo[2], hi[2], rss[i], face[i])
    # the two lowest local minima (no lower value among the 8 neighbours), first in row-major
    # order on ties
    first = second = -1
    v1 = v2 = np.inf
    for i in range(nd):
        row = rss[i]
        for j in range(ns):
            r = row[j]
            if not (r < v2 and r <= row[max(j - 1, 0)] and r <= row[min(j + 1, ns - 1)]):
                continue                     # most points: a lower neighbour in their row
            if _local_min(rss, i, j):
                if r < v1:
                    second, v2 = first, v1
                    first, v1 = i * ns + j, r
                else:
                    second, v2 = i * ns + j, r
    first = max(first, 0)
    second = first if second < 0 else second
    best_face = np.argmin(face)
    best_edge = np.argmin(rss[:, ns - 1]) * ns + ns - 1
    for c, g in enumerate((first, second, best_face, best_edge)):
        starts[c, 0], starts[c, 1] = pos[g // ns], pos[nd + g % ns]


@kernel
def _exps(b, p, u, e):
    """u = exp(-b·D) and e = exp(-b·D*) at p = (S0, D, f, D*); alone, this loop runs several
    exps at once."""
    for k in range(b.size):
        u[k] = exp(-b[k] * p[1])
        e[k] = exp(-b[k] * p[3])


@kernel
def _signal_terms(b, y, p, u, w, sig):
    """The model signal at p = (S0, D, f, D*) into sig, with u = exp(-b·D) and w = exp(-b·D*) - 1
    into u and w (the terms that the derivatives reuse); returns the RSS against y."""
    _exps(b, p, u, w)
    for k in range(b.size):
        w[k] -= 1.0        # not expm1 (twice the time): w's error stays ~1e-16 absolute,
        #                    negligible next to 1 in 1 + f·w
    return _signal_rss(p, u, w, y, sig)


@kernel
def _signal_rss(p, u, w, y, sig):
    """sig = S0·u·(1 + f·w), :func:`ivim_common.model.ivim_signal` in the terms of
    :func:`_signal_terms`; returns the RSS against y."""
    rss = 0.0
    for k in range(u.size):
        sig[k] = p[0] * u[k] * (1.0 + p[2] * w[k])
        rss += (sig[k] - y[k]) ** 2
    return rss


@kernel
def _project(b, y, p, lo, hi, u, w, sig):
    """Replace S0 and f of p by their exact best values in the box for its (D, D*) (variable
    projection); fill u, w, sig as :func:`_signal_terms`; return the RSS."""
    _exps(b, p, u, w)
    g11 = g12 = g22 = h1 = h2 = yy = 0.0
    for k in range(b.size):
        uk, ek = u[k], w[k]
        w[k] = ek - 1.0
        x1 = uk * ek                         # the perfusion basis exp(-b·(D + D*))
        g11 += x1 * x1
        g12 += x1 * uk
        g22 += uk * uk
        h1 += x1 * y[k]
        h2 += uk * y[k]
        yy += y[k] * y[k]
    p[0], p[2], _, _ = _amplitudes(g11, g12, g22, h1, h2, yy, lo[0], hi[0], lo[2], hi[2])
    return _signal_rss(p, u, w, y, sig)


@kernel
def _newton_terms(b, y, p, u, w, sig, grad, jj, hess):
    """Gradient, Gauss-Newton matrix and exact Hessian of ½·RSS at p, into grad (4), jj, hess
    (4, 4, upper triangles), from u, w, sig of :func:`_signal_terms` at p.

    With v = u·w, S = S0·(u + f·v) and every derivative is S0, f and powers of b times u or v,
    so all the sums over b reduce to 15 moments Σ b^k·{u², u·v, v², r·u, r·v} (k = 0, 1, 2)."""
    U0 = U1 = U2 = X0 = X1 = X2 = V0 = V1 = V2 = R0 = R1 = R2 = Q0 = Q1 = Q2 = 0.0
    for k in range(b.size):
        bk, uk = b[k], u[k]
        vk = w[k] * uk
        rk = sig[k] - y[k]
        uu, uv, vv, ru, rv = uk * uk, uk * vk, vk * vk, rk * uk, rk * vk
        U0 += uu
        U1 += bk * uu
        U2 += bk * bk * uu
        X0 += uv
        X1 += bk * uv
        X2 += bk * bk * uv
        V0 += vv
        V1 += bk * vv
        V2 += bk * bk * vv
        R0 += ru
        R1 += bk * ru
        R2 += bk * bk * ru
        Q0 += rv
        Q1 += bk * rv
        Q2 += bk * bk * rv
    U, X, V, Ru, Rv = (U0, U1, U2), (X0, X1, X2), (V0, V1, V2), (R0, R1, R2), (Q0, Q1, Q2)
    S0, f = p[0], p[2]
    s2 = S0 * S0
    jj[0, 0] = U[0] + 2 * f * X[0] + f * f * V[0]
    jj[0, 1] = -S0 * (U[1] + 2 * f * X[1] + f * f * V[1])
    jj[0, 2] = S0 * (X[0] + f * V[0])
    jj[0, 3] = -S0 * f * (U[1] + (1 + f) * X[1] + f * V[1])
    jj[1, 1] = s2 * (U[2] + 2 * f * X[2] + f * f * V[2])
    jj[1, 2] = -s2 * (X[1] + f * V[1])
    jj[1, 3] = s2 * f * (U[2] + (1 + f) * X[2] + f * V[2])
    jj[2, 2] = s2 * V[0]
    jj[2, 3] = -s2 * f * (X[1] + V[1])
    jj[3, 3] = s2 * f * f * (U[2] + 2 * X[2] + V[2])
    grad[0] = Ru[0] + f * Rv[0]
    grad[1] = -S0 * (Ru[1] + f * Rv[1])
    grad[2] = S0 * Rv[0]
    grad[3] = -S0 * f * (Ru[1] + Rv[1])
    # Σ r·∇²S: -b times the first derivatives, except those with S0 (the first derivatives
    # over S0) and d²S/df dD* = -b·S0·(u + v)
    for i in range(4):
        for j in range(i, 4):
            hess[i, j] = jj[i, j]
    hess[0, 1] -= Ru[1] + f * Rv[1]
    hess[0, 2] += grad[2] / S0
    hess[0, 3] += grad[3] / S0
    hess[1, 1] += S0 * (Ru[2] + f * Rv[2])
    hess[1, 2] -= S0 * Rv[1]
    hess[1, 3] += S0 * f * (Ru[2] + Rv[2])
    hess[2, 3] -= S0 * (Ru[1] + Rv[1])
    hess[3, 3] += S0 * f * (Ru[2] + Rv[2])


@kernel
def _damped_step(h, jj, held, lam, grad, low, step):
    """Solve (h + damping)·step = -grad by Cholesky, held parameters' rows and columns replaced
    by the identity; damping = lam·|diag(jj)|.  Upper triangles of h, jj are read; low (4, 4)
    is scratch.  Returns False where the damped matrix is not positive definite."""
    ok = True
    for j in range(4):
        for i in range(j, 4):
            v = 0.0 if held[i] or held[j] else h[j, i]
            if i == j:
                v += lam * abs(jj[j, j]) + 1e-300 + held[j]
            for m in range(j):
                v -= low[i, m] * low[j, m]
            if i == j:
                ok &= v > 0
                low[j, j] = np.sqrt(v if v > 0 else 1.0)
            else:
                low[i, j] = v / low[j, j]
    for i in range(4):
        step[i] = -grad[i]
        for m in range(i):
            step[i] -= low[i, m] * step[m]
        step[i] /= low[i, i]
    for i in range(3, -1, -1):
        for m in range(i + 1, 4):
            step[i] -= low[m, i] * step[m]
        step[i] /= low[i, i]
    return ok


@kernel
def _newton(b, y, p, lo, hi, vary, scratch):
    """Box-constrained damped Newton from p (updated in place); returns the RSS.

    Works in coordinates scaled to [0, 1] over the box; fixed parameters, and those on a bound
    whose gradient points outwards, are held (projected Newton).  The Hessian is exact where,
    damped Levenberg-Marquardt style, it is positive definite; else the Gauss-Newton one.  Each
    step is tried clipped to the box and, where clipping changed it, also shortened to its first
    bound; each trial's (D, D*) takes its exact best (S0, f) (variable projection), which keeps
    the steps on the floor of the curved f-D* valley instead of crawling along it.  Stops once an
    undamped, unclipped step changes the RSS by less than RTOL, or after MAX_ITER iterations.
    ``scratch``: see :func:`_scratch`."""
    nb = b.size
    vec, mats, arr = scratch[4], scratch[5], scratch[6]
    wd, x, grad, step, held = vec[0], vec[1], vec[2], vec[3], vec[4]
    p_t, p_s = vec[5], vec[6]  # the trial, the shortened trial
    jj, hess, low = mats[0], mats[1], mats[2]
    # u, w, signal at p, at the trial, at the shortened trial
    u, w, sig, u_t, w_t, sig_t, u_s, w_s, sig_s = (arr[0], arr[1], arr[2], arr[3], arr[4],
                                                   arr[5], arr[6], arr[7], arr[8])
    for i in range(4):
        p[i] = _clip(p[i], lo[i], hi[i])
        wd[i] = hi[i] - lo[i] if vary[i] else 0.0
        x[i] = (p[i] - lo[i]) / wd[i] if wd[i] > 0 else 0.0
    rss = _signal_terms(b, y, p, u, w, sig)
    lam = 1e-4
    for it in range(MAX_ITER):
        _newton_terms(b, y, p, u, w, sig, grad, jj, hess)
        for i in range(4):
            grad[i] *= wd[i]
            for j in range(i, 4):
                jj[i, j] *= wd[i] * wd[j]
                hess[i, j] *= wd[i] * wd[j]
            held[i] = wd[i] == 0 or (x[i] <= 0.0 and grad[i] > 0.0) or (x[i] >= 1.0 and grad[i] < 0.0)
            if held[i]:
                grad[i] = 0.0
        if not _damped_step(hess, jj, held, lam, grad, low, step):
            _damped_step(jj, jj, held, lam, grad, low, step)
        unclipped = True
        big = 0.0
        for i in range(4):
            big = max(big, abs(step[i]))
            x_t = _clip(x[i] + step[i], 0.0, 1.0)
            unclipped &= x_t == x[i] + step[i]
            p_t[i] = lo[i] + x_t * wd[i]
        rss_new = _project(b, y, p_t, lo, hi, u_t, w_t, sig_t)
        short = False
        if not unclipped:        # also try the step shortened to its first bound
            reach = 1.0
            for i in range(4):
                if step[i] > 0:
                    reach = min(reach, (1.0 - x[i]) / step[i])
                elif step[i] < 0:
                    reach = min(reach, -x[i] / step[i])
            for i in range(4):
                p_s[i] = lo[i] + _clip(x[i] + reach * step[i], 0.0, 1.0) * wd[i]
            rss_short = _project(b, y, p_s, lo, hi, u_s, w_s, sig_s)
            short = rss_short < rss_new
            if short:
                rss_new = rss_short
        better = rss_new < rss
        done = ((abs(rss - rss_new) <= RTOL * rss and unclipped and lam <= 1e-2)
                or big < 1e-12 or (not better and lam > 1e8))
        if better:
            p_n, u_n, w_n, sig_n = (p_s, u_s, w_s, sig_s) if short else (p_t, u_t, w_t, sig_t)
            for k in range(nb):
                u[k], w[k], sig[k] = u_n[k], w_n[k], sig_n[k]
            for i in range(4):
                p[i] = p_n[i]
            for i in range(4):
                x[i] = (p[i] - lo[i]) / wd[i] if wd[i] > 0 else 0.0
            rss = rss_new
            lam = max(lam * 0.2, 1e-9)
        else:
            lam *= 8.0
        if done:
            break
    return rss


@kernel(entry=True)
def _solve_all(b, signal, voxel, lo, hi, vary, from_grid, t_d, t_s, scratch, cand, rss):
    """Newton for each job j: the voxel signal[voxel[j]] in the box (lo[j], hi[j]) from each of
    its cand.shape[1] starts; writes the points into cand[j] (n_jobs, n_starts, 4) and their
    RSS into rss[j] (n_jobs, n_starts).

    Where from_grid[j], the starts are :func:`_grid`'s, each given its exact (S0, f) first, and
    the last two live on their faces (f, then D*, held at its upper bound); a start that repeats
    the first one gets rss = inf.  Elsewhere cand[j, 0] holds the start.  Step 2 runs four grid
    starts per voxel, step 3 one start per job; one kernel for both, so that the solver's code
    is compiled once.  ``scratch``: see :func:`_scratch`."""
    starts, boxes, st = scratch[1], scratch[2], scratch[3]
    for j in range(voxel.size):
        y = signal[voxel[j]]
        if from_grid[j]:
            _grid(b, y, lo[j], hi[j], t_d, t_s, starts, scratch[0])
        for c in range(cand.shape[1]):
            box_lo, q = boxes[c], cand[j, c]
            for i in range(4):
                box_lo[i] = lo[j, i]
            if c >= 2:                       # faces: f, then D*, held at its upper bound
                box_lo[c] = hi[j, c]
            repeat = False
            if from_grid[j]:
                q[0], q[1], q[2], q[3] = 1.0, starts[c, 0], 0.0, starts[c, 1]
                _project(b, y, q, box_lo, hi[j], st[0], st[1], st[2])
                repeat = c > 0               # of the first start, before Newton moved it
                for i in range(4):
                    repeat &= q[i] == boxes[4, i]
                    if c == 0:
                        boxes[4, i] = q[i]
            rss[j, c] = np.inf if repeat else _newton(b, y, q, box_lo, hi[j], vary, scratch)


@kernel(entry=True)
def _jobs(cand, rss2, job):
    """job[v, c]: whether step 3 refines the step-2 candidate c of voxel v, that is, whether its
    RSS is within STEP2_TIE of the voxel's lowest (a failed, NaN one never is) and its point is
    not that of a candidate refined before (candidates that reached the same point: once)."""
    for v in range(cand.shape[0]):
        best = np.inf
        for c in range(4):
            if rss2[v, c] < best:
                best = rss2[v, c]
        for c in range(4):
            job[v, c] = rss2[v, c] <= best * (1 + STEP2_TIE) and np.isfinite(rss2[v, c])
            for k in range(c):
                same = True
                for i in range(4):
                    same &= abs(cand[v, c, i] - cand[v, k, i]) <= 1e-9 * abs(cand[v, c, i])
                job[v, c] &= not (job[v, k] and same)


@kernel(entry=True)
def _pick(voxel, rss, p, out):
    """out[v] = the refined point of lowest RSS among the jobs of voxel v (jobs in voxel order),
    the first on ties; out[v] is left as it was where none has a finite RSS."""
    lowest = np.inf
    for j in range(voxel.size):
        if j == 0 or voxel[j] != voxel[j - 1]:
            lowest = np.inf
        if rss[j] < lowest:
            lowest = rss[j]
            for i in range(4):
                out[voxel[j], i] = p[j, i]


def _grid_positions(vary):
    """Positions in [0, 1] of the grid points along D (one where D is fixed) and D*."""
    return (np.linspace(0.0, 1.0, GRID_D) if vary[1] else np.zeros(1)), np.linspace(0.0, 1.0, GRID_DSTAR)


def _scratch(nb, t_d, t_s):
    """The kernels' scratch for nb b-values and the grid positions t_d, t_s, allocated once per
    call of fit_fast (the kernels do not check sizes): the grid's tables, starts (4, 2), boxes
    (5, 4: the step-2 boxes' lower bounds, the first start), signal terms (3, nb) for
    :func:`_project`; Newton's vectors (7, 4), matrices (3, 4, 4) and signal terms (9, nb)."""
    nd, ns = t_d.size, t_s.size
    return (np.empty((nd + ns) * (nb + 1) + (2 * nd + 3) * ns), np.empty((4, 2)), np.empty((5, 4)),
            np.empty((3, nb)), np.empty((7, 4)), np.empty((3, 4, 4)), np.empty((9, nb)))


def _step3(bvals, signal, cand, rss2, lo, hi, vary, t_d, t_s, scratch, limits=None):
    """Step 3 of every voxel from its step-2 candidates cand (n, 4, 4) and their RSS (n, 4):
    Newton in the step-3 box (:func:`ivim_common.model.refinement_bounds`) of each candidate
    within STEP2_TIE of the voxel's lowest (once per distinct point); the lowest refined RSS
    wins, the first on ties.  Returns params (n, 4), NaN where every candidate failed.

    Where step-2 f is 0, the D* box is the nominal range, searched from a grid rather than
    polished from the step-2 point (so is any box that does not hold the step-2 point, see
    :func:`ivim_common.model.needs_search`); where the refined f is 0, D* is settled by
    :func:`ivim_common.model.settle_undetermined_dstar`."""
    job = np.empty(rss2.shape, dtype=np.bool_)
    _jobs(cand, rss2, job)
    # voxel by voxel, candidates in order; np.nonzero's arrays are strided views, and a strided
    # array would make numba compile a second specialisation of the kernels below
    voxel, which = (np.ascontiguousarray(a) for a in np.nonzero(job))
    start = cand[voxel, which]
    r_lo, r_hi = model.refinement_bounds(start, vary, lo[voxel], hi[voxel], limits)
    zero_f = model.needs_search(start, r_lo, r_hi)
    p, rss = start[:, None].copy(), np.empty((len(start), 1))
    _solve_all(bvals, signal, voxel, r_lo, r_hi, vary, zero_f, t_d, t_s, scratch, p, rss)
    p, rss = p.reshape(-1, 4), rss.reshape(-1)
    model.settle_undetermined_dstar(p, r_lo, r_hi)
    out = np.full((len(signal), 4), np.nan)
    _pick(voxel, rss, p, out)
    return out


def fit_fast(bvals, signal, lo, hi, vary, limits=None):
    """The compiled engine, voxel by voxel.

    Step 2: candidates come from the two lowest local minima of a (D, D*) grid and from the
    best grid points of the faces f = f_max and D* = D*_max (where interior starts can stall
    short of the box's minimum); each is polished by Newton in the nominal box (on its face
    for the last two).  The step-2 result is the candidate of lowest RSS; candidates within
    STEP2_TIE of it (relative RSS) are ties that a differential evolution could not tell apart.
    Step 3: Newton in the ±5 % box of the step-2 result (of each tie, the lowest refined RSS
    winning).  Nothing is random, and each voxel is fitted on its own.

    Parameters
    ----------
    bvals : ndarray (n_b,); signal : ndarray (n_voxels, n_b)
    lo, hi : ndarray (n_voxels, 4), nominal bounds; vary : ndarray of bool (4,)
    limits : dict, optional
        What keeps step 3 inside the user's bounds (:func:`ivim_common.model.refinement_limits`).

    Returns
    -------
    params : ndarray (n_voxels, 4)
    """
    c = np.ascontiguousarray
    bvals, signal = c(bvals, dtype=float), c(signal, dtype=float)
    vary = np.asarray(vary, dtype=np.bool_)
    if signal.ndim != 2 or signal.shape[1] != bvals.size or not np.shape(lo) == np.shape(hi) == (len(signal), 4):
        raise ValueError("fit_fast: signal must be (n_voxels, n_b) and lo, hi (n_voxels, 4)")
    lo, hi = c(lo, dtype=float), c(hi, dtype=float)
    t_d, t_s = _grid_positions(vary)
    scratch = _scratch(bvals.size, t_d, t_s)
    cand, rss2 = np.empty((len(signal), 4, 4)), np.empty((len(signal), 4))
    _solve_all(bvals, signal, np.arange(len(signal)), lo, hi, vary, np.ones(len(signal), np.bool_),
               t_d, t_s, scratch, cand, rss2)
    return _step3(bvals, signal, cand, rss2, lo, hi, vary, t_d, t_s, scratch, limits)


_ready = False      # compiled or loaded in this process
HELPER_TASKS = ("_compile_grid",)    # what a helper process compiles on the first run (see prepare)


def _example():
    """A voxel's data, box, grid and scratch, for which prepare compiles the kernels: the same
    compiled code serves every approach and every data."""
    b = np.array([0.0, 50.0, 400.0, 800.0])
    signal = model.ivim_signal(b, 1000.0, 1e-3, 0.1, 20e-3)[None]
    _, lo, hi, vary = model.voxel_bounds(b, signal, "one-step", "2020")
    vary = np.asarray(vary, dtype=np.bool_)
    t_d, t_s = _grid_positions(vary)
    return b, signal, lo, hi, vary, t_d, t_s, _scratch(b.size, t_d, t_s)


def compiles_here():
    """Whether this process compiles the kernels (numba's cache lacks them) and can cache them
    (see :func:`ivim_common.compiled.prepare`), from the cache index of the smallest one."""
    return compiled.compiles_here(_pick, np.zeros(1, np.int64), np.ones(1), np.ones((1, 4)), np.ones((1, 4)))


def _compile_grid():
    """The helper process's share of the first compile: the grid search, into numba's cache."""
    b, signal, lo, hi, _, t_d, t_s, scratch = _example()
    compiled.compile_for(_grid, b, signal[0], lo[0], hi[0], t_d, t_s, scratch[1], scratch[0])


def prepare(announce=True, helper=None):
    """Compile the kernels (the first run of an installation, some 3-6 s) or load them from
    numba's cache, once per process; say so on stderr if ``announce`` and it takes over
    :data:`ivim_common.compiled.COMPILE_NOTICE_AFTER_S`.  With a ``helper`` (see
    :func:`ivim_common.compiled.prepare`) compiling the grid search meanwhile, compile the
    Newton solver (with the variable projection it calls, which _solve_all calls too) and
    step 3's kernels here first, then load the grid search from the cache and build the
    kernel that calls both."""
    global _ready
    if _ready:
        return
    b, signal, lo, hi, vary, t_d, t_s, scratch = _example()
    with notice_if_slow(announce, COMPILE_NOTICE):
        if helper:
            compiled.compile_for(_newton, b, signal[0], lo[0].copy(), lo[0], hi[0], vary, scratch)
            compiled.compile_for(_jobs, np.ones((1, 4, 4)), np.ones((1, 4)), np.ones((1, 4), np.bool_))
            helper.wait(f"{__name__}:_compile_grid")
        fit_fast(b, signal, lo, hi, vary)
    _ready = True


def fit(bvals, signal, init, lo, hi, vary, seeds, limits=None):
    """The engine's entry point (see :mod:`ivim_common.engines`); ``init`` and ``seeds`` are
    not needed: the grid finds the starts and nothing is random."""
    return {"params": fit_fast(bvals, signal, lo, hi, vary, limits)}


COMPILE_NOTICE = ("ivim-toolbox: compiling the fast engine, some 3-6 s (the first run of an "
                  "installation; it is cached for later runs where it can be written)")
