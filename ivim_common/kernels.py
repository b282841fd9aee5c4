"""The compiled loops of the trust maps: :func:`ivim_common.trust.fisher_sd` and
:func:`ivim_common.trust.fit_mono`, one voxel per iteration.

As numpy whole-array passes they cost about a fifth of the fit (a batch of 4 x 4 inverses, and
a Levenberg-Marquardt loop of masked passes over the voxels still iterating); compiled as the
fast engine's kernels (:func:`ivim_common.compiled.kernel`: cached entries, no reference counting,
nothing allocated inside, the callers hand over the scratch) and with
:func:`ivim_common.compiled.exp`, some 6 %.  Only :mod:`ivim_common.trust` imports this module,
so that the light users of the model (the viewer) do not import numba.
"""
import numpy as np

from .compiled import exp, kernel


@kernel
def _invert(m, inv):
    """inv = m⁻¹ of a 4 x 4 matrix by Gauss-Jordan elimination with partial pivoting (m is
    overwritten); returns False, leaving inv undefined, where a pivot is exactly 0."""
    for i in range(4):
        for j in range(4):
            inv[i, j] = 1.0 if i == j else 0.0
    for c in range(4):
        p = c
        for r in range(c + 1, 4):
            if abs(m[r, c]) > abs(m[p, c]):
                p = r
        if m[p, c] == 0.0:
            return False
        for j in range(4):
            m[c, j], m[p, j] = m[p, j], m[c, j]
            inv[c, j], inv[p, j] = inv[p, j], inv[c, j]
        pivot = m[c, c]
        for j in range(4):
            m[c, j] /= pivot
            inv[c, j] /= pivot
        for r in range(4):
            if r != c:
                factor = m[r, c]
                for j in range(4):
                    m[r, j] -= factor * m[c, j]
                    inv[r, j] -= factor * inv[c, j]
    return True


@kernel(entry=True)
def fisher_sd(b, params, rss, free, n_varied, max_inflation, sd, sd_pool, u, e, info, inv, scale, held):
    """:func:`ivim_common.trust.fisher_sd` voxel by voxel into sd (n, 4) and sd_pool (n,).
    Scratch: u, e (n_b,), info, inv (4, 4), scale (4,), held (4,) of bool.  The columns of the
    Jacobian are :func:`ivim_common.model.ivim_jacobian`'s, in the same operations."""
    nb = b.size
    for v in range(params.shape[0]):
        p = params[v]
        s0, fiv = p[0], p[2]
        for k in range(nb):                  # alone, this loop runs several exps at once
            u[k] = exp(-b[k] * p[1])
            e[k] = exp(-b[k] * p[3])
        i00 = i01 = i02 = i03 = i11 = i12 = i13 = i22 = i23 = i33 = 0.0    # in registers
        for k in range(nb):
            bk, e_d, e_p = b[k], u[k], e[k]
            tissue_and_blood = e_d * (fiv * e_p + 1.0 - fiv)
            j0 = tissue_and_blood
            j1 = -bk * s0 * tissue_and_blood
            j2 = s0 * e_d * (e_p - 1.0)
            j3 = -bk * s0 * fiv * e_d * e_p
            i00 += j0 * j0
            i01 += j0 * j1
            i02 += j0 * j2
            i03 += j0 * j3
            i11 += j1 * j1
            i12 += j1 * j2
            i13 += j1 * j3
            i22 += j2 * j2
            i23 += j2 * j3
            i33 += j3 * j3
        info[0, 0], info[0, 1], info[0, 2], info[0, 3] = i00, i01, i02, i03
        info[1, 1], info[1, 2], info[1, 3], info[2, 2], info[2, 3], info[3, 3] = i11, i12, i13, i22, i23, i33
        for i in range(4):                   # a parameter the signal ignores is held too
            held[i] = not (free[v, i] and info[i, i] > 0)
            scale[i] = 1.0 if held[i] else np.sqrt(info[i, i])
        for i in range(4):                   # unit diagonal on the free ones, identity elsewhere
            for j in range(i, 4):
                if i == j:
                    x = 1.0
                elif held[i] or held[j]:
                    x = 0.0
                else:
                    x = info[i, j] / (scale[i] * scale[j])
                info[i, j] = info[j, i] = x
        regular = _invert(info, inv)
        for i in range(4):
            regular &= inv[i, i] < max_inflation
        sigma2 = rss[v] / (nb - n_varied) if nb > n_varied else np.nan
        for i in range(4):
            sd[v, i] = np.sqrt(inv[i, i] * sigma2) / scale[i]
        # D*p = D + D*: var(D) + var(D*) + 2 cov(D, D*), D's terms 0 where D is held
        var_d = 0.0 if held[1] else sd[v, 1] ** 2
        cross = 0.0 if held[1] else 2 * inv[1, 3] / (scale[1] * scale[3])
        sd_pool[v] = np.nan if held[3] or not regular else np.sqrt(var_d + sd[v, 3] ** 2 + cross * sigma2)
        for i in range(4):
            if held[i] or not regular:
                sd[v, i] = np.nan


@kernel
def _profile(b, y, d, e):
    """e = exp(-b·d) and the best S0 for the ADC d; returns S0, the RSS and the component of
    the RSS's derivative over d along e (S0 adjusts along e), for the step from d."""
    for k in range(b.size):                  # alone, this loop runs several exps at once
        e[k] = exp(-b[k] * d)
    ye = ee = 0.0
    for k in range(b.size):
        ye += y[k] * e[k]
        ee += e[k] * e[k]
    s0 = ye / ee
    rss = jd_e = 0.0
    for k in range(b.size):                  # two independent sums: one pass's time
        r = y[k] - s0 * e[k]
        rss += r * r
        jd_e += -b[k] * s0 * e[k] * e[k]
    return s0, rss, jd_e / ee


@kernel(entry=True)
def fit_mono(b, signal, max_iter, rtol, s0, adc, rss, e, e_trial):
    """:func:`ivim_common.trust.fit_mono` voxel by voxel into s0, adc, rss (n,); e, e_trial
    (n_b,) are scratch."""
    nb = b.size
    for v in range(signal.shape[0]):
        y = signal[v]
        sw = sb = sbb = sl = sbl = 0.0
        for k in range(nb):
            w = y[k] * y[k]
            wl = w * np.log(y[k])
            sw += w
            sb += w * b[k]
            sbb += w * (b[k] * b[k])
            sl += wl
            sbl += wl * b[k]
        d = -(sw * sbl - sb * sl) / (sw * sbb - sb * sb)
        d = d if np.isfinite(d) and d > 0.0 else 0.0
        s, r, along = _profile(b, y, d, e)
        lam = 1e-3
        for _ in range(max_iter):
            # S0 is solved exactly for each ADC (variable projection), so the step is along
            # ADC, of the derivative less its component along e
            jj = jr = 0.0
            for k in range(nb):
                jd = -b[k] * s * e[k] - along * e[k]
                jj += jd * jd
                jr += jd * (y[k] - s * e[k])
            step = jr / (jj * (1.0 + lam))
            trial = d + (step if np.isfinite(step) else 0.0)
            trial = trial if trial > 0.0 else 0.0
            s_t, r_t, along_t = _profile(b, y, trial, e_trial)
            better = r_t <= r
            gain = (r - r_t) / max(r, 1e-300)
            if better:
                d, s, r, along = trial, s_t, r_t, along_t
                for k in range(nb):
                    e[k] = e_trial[k]
                lam *= 0.1
            else:
                lam *= 10.0
            if (better and gain < rtol) or lam > 1e8:
                break
        s0[v], adc[v], rss[v] = s, d, r
