"""The spatial prior of the Bayesian engine: tissues estimated from the image, and neighbours.

Each voxel's prior on the grid coordinates x = (log D, f, log D*ₚ) of
:mod:`ivim_common.engines.bayes` becomes its broad prior times one Gaussian factor per coordinate,

    p(x_i | rest) ∝ Π_k N(x_i; μ_k, V_k)^r_ik · Π_j N(x_i; z_j, τ²/w_ij + s_j²),

a population (hierarchical) term, the voxel's tissues k of a Gaussian mixture fitted to the
image's voxel-wise posteriors (means μ_k, spreads V_k, responsibilities r_ik), times a Gaussian
Markov random field on the 3-D 6-neighbourhood that pulls x_i towards its neighbours' values z_j
(known to within s_j).  The factors are Gaussian in x, so their product is one Gaussian per
coordinate and the grid posterior of a voxel keeps its cost; the credible intervals are those of
each voxel's posterior given its tissue and its neighbours' values (narrower than the joint
posterior's marginals would be).

Edges stay sharp: w_ij = (Σ_k r_ik·r_jk) · exp(−δ_ij²/2), so neighbours of different tissues, or
whose voxel-wise posteriors differ by much more than their spread (δ_ij: the difference of their
medians in units of their posterior SDs, averaged over the coordinates the approach leaves
free), hardly pull on each other.  Variation inside a tissue survives: the field pulls towards
the neighbours' values, not onto the tissue's mean, and the tissue's spread V_k is that of the
voxel-wise medians (wider than the tissue's own), so the population term stays weak.  τ² is the
median voxel-wise posterior variance over COUPLING: a fully coupled neighbour weighs COUPLING
times a typical voxel's data.

The neighbours' values z_j, s_j: the posterior medians and SDs of the voxels' signals pooled with
their neighbours' (POOL_STEPS rounds of the same edge-weighted local mean, each signal normalised
by its voxel-wise S0), which is what a field of similar neighbours says, with the evidence of all
of them (the posterior median of a voxel alone, at clinical SNR, mostly reflects the broad prior:
averaging those would average their bias).  Then SWEEPS conditional updates (iterated conditional
modes): each voxel's grid posterior given its tissue and its neighbours' current values; more than
one measured no better (docs/accuracy_priors.md).  No sampling: the cost is three voxel-wise
passes.  This module computes only (numpy): the engine gives it the grid posterior.
"""
import numpy as np

COUPLING = 8.0             # a fully coupled neighbour weighs this many typical voxels' own data
POOL_STEPS = 8             # rounds of edge-weighted local means of the signals
SWEEPS = 1                 # conditional updates after the pooled field
MAX_TISSUES = 4            # components of the mixture at most (chosen by BIC)
EM_ITER = 60
TISSUE_AXES = [0, 1]       # the mixture sees log D and f: D*ₚ, which the data barely determine at
                           # clinical SNR (its voxel-wise medians pile up where the box ends), would
                           # split tissues by noise
VAR_FLOOR = (1e-6, 1e-6, 1e-6)     # floor of a tissue's variance of log D, f, log D*ₚ
NEIGHBOUR_STEPS = ((1, 0, 0), (-1, 0, 0), (0, 1, 0), (0, -1, 0), (0, 0, 1), (0, 0, -1))


NO_BOOTSTRAP = "--bootstrap does not apply to --prior spatial (its posterior gives the intervals)"


def check_volume(shape, n_voxels):
    """ValueError (one line) unless the spatial prior can run: a volume (``shape`` not None,
    at most 3 axes) and at least 2 voxels in its mask."""
    if shape is None:
        raise ValueError("--prior spatial needs a volume and its mask (IvimModel.fit), not a list of voxels "
                         "(fit_voxels)")
    if len(shape) > 3:
        raise ValueError(f"--prior spatial needs a volume of at most 3 axes, got {len(shape)}")
    if n_voxels < 2:
        raise ValueError(f"--prior spatial needs at least 2 voxels in the mask, got {n_voxels}")


def neighbours(shape, voxel_ids):
    """The rows of each voxel's 6 neighbours.

    Parameters
    ----------
    shape : tuple of int (up to 3 axes)
        The volume's shape.
    voxel_ids : ndarray of int (n,)
        Flat indices of the voxels in the volume (C order).

    Returns
    -------
    ndarray of int (n, 6): the row of each neighbour among voxel_ids, -1 where it is not one.
    """
    shape = tuple(shape) + (1,) * (3 - len(shape))
    coords = np.array(np.unravel_index(np.asarray(voxel_ids, dtype=np.int64), shape)).T.reshape(-1, 3)
    rows = np.full(shape, -1, dtype=np.int64)
    rows[tuple(coords.T)] = np.arange(len(coords))
    nbr = np.full((len(coords), len(NEIGHBOUR_STEPS)), -1, dtype=np.int64)
    for s, step in enumerate(NEIGHBOUR_STEPS):
        c = coords + step
        inside = ((c >= 0) & (c < shape)).all(axis=1)
        nbr[inside, s] = rows[tuple(c[inside].T)]
    return nbr


def locations(summaries):
    """Posterior medians (n, 3) and SDs (n, 3) in the grid's coordinates (log D, f, log D*ₚ)
    from the engine's summaries (n, 6, 5) (SD from the 95 % interval, over 3.92)."""
    cols = [1, 2, 4]
    med, lo, hi = (summaries[:, row][:, cols].copy() for row in (4, 2, 3))
    with np.errstate(invalid="ignore", divide="ignore"):
        for a in (0, 2):
            med[:, a], lo[:, a], hi[:, a] = np.log(med[:, a]), np.log(lo[:, a]), np.log(hi[:, a])
    return med, (hi - lo) / 3.92


def tissues(loc, scale, max_k=MAX_TISSUES):
    """Gaussian mixture (diagonal) of the voxels' locations (n, 3) in TISSUE_AXES, each seen
    through its own posterior SD ``scale`` (n, 3): component k has the density
    N(μ_k, V_k + scale_i²) at voxel i, so that a poorly determined coordinate (f at low SNR)
    hardly sways the tissues.  The number of components (1 to max_k) by BIC; NaN rows left out.

    Returns
    -------
    resp : ndarray (n, K)
        Responsibilities (0 for NaN rows).
    mu, spread : ndarray (K, 3)
        The tissues' means and variances of the locations, all three coordinates.
    """
    ok = np.isfinite(loc).all(axis=1) & np.isfinite(scale).all(axis=1)
    x = loc[ok]
    best = None
    for k in range(1, min(max_k, max(1, len(x) // 10)) + 1):
        resp, loglik = _em(x[:, TISSUE_AXES], scale[ok][:, TISSUE_AXES] ** 2, k)
        bic = -2 * loglik + (k * 2 * len(TISSUE_AXES) + k - 1) * np.log(len(x))
        if best is None or bic < best[0]:
            best = (bic, resp)
    resp = best[1]
    weight = resp.sum(axis=0) + 1e-12
    mu = resp.T @ x / weight[:, None]
    spread = np.maximum(np.einsum("ik,ika->ka", resp, (x[:, None, :] - mu[None]) ** 2) / weight[:, None], VAR_FLOOR)
    full = np.zeros((len(loc), len(mu)))
    full[ok] = resp
    return full, mu, spread


def _em(x, s2, k):
    """Responsibilities and log-likelihood of a k-component diagonal Gaussian mixture whose
    points have known noise variances s2, by EM (the M-step of V_k by moments, less the mean
    noise), started from the quantiles of the first coordinate."""
    order = np.argsort(x[:, 0], kind="stable")
    resp = np.zeros((len(x), k))
    resp[order, np.minimum(np.arange(len(x)) * k // len(x), k - 1)] = 1.0
    floor = np.array(VAR_FLOOR)[:x.shape[1]]
    var = np.tile(floor, (k, 1))
    for _ in range(EM_ITER):
        weight = resp.sum(axis=0) + 1e-12
        prec = resp[:, :, None] / (var[None] + s2[:, None, :])                # (n, K, axes)
        mu = (prec * x[:, None, :]).sum(axis=0) / prec.sum(axis=0)
        dev2 = (x[:, None, :] - mu[None]) ** 2
        var = np.maximum((resp[:, :, None] * (dev2 - s2[:, None, :])).sum(axis=0) / weight[:, None], floor)
        total = var[None] + s2[:, None, :]
        logp = (np.log(weight / len(x))[None] - 0.5 * np.log(2 * np.pi * total).sum(axis=2)
                - 0.5 * (dev2 / total).sum(axis=2))
        top = logp.max(axis=1, keepdims=True)
        resp = np.exp(logp - top)
        norm = resp.sum(axis=1, keepdims=True)
        resp /= norm
    return resp, float((np.log(norm) + top).sum())


def edge_weights(loc, scale, nbr, resp):
    """w (n, 6) of each neighbour pair: the chance that both are of one tissue times
    exp(−δ²/2), δ² the mean over coordinates of (m_i − m_j)² / (s_i² + s_j²); 0 where no
    neighbour or a failed voxel."""
    has = nbr >= 0
    j = np.where(has, nbr, 0)
    same = np.einsum("ik,ijk->ij", resp, resp[j])
    with np.errstate(invalid="ignore"):
        delta2 = np.mean((loc[:, None, :] - loc[j]) ** 2 / (scale[:, None, :] ** 2 + scale[j] ** 2), axis=2)
    return np.nan_to_num(np.where(has, same * np.exp(-0.5 * delta2), 0.0), nan=0.0)


def pool_signals(signal, nbr, w, steps=POOL_STEPS):
    """Edge-preserving local means of the rows of signal (n, n_b): ``steps`` times, each row
    becomes its weighted mean with its neighbours' (weights w, its own 1)."""
    j = np.where(nbr >= 0, nbr, 0)
    out = signal.copy()
    for _ in range(steps):
        out = (out + np.einsum("ij,ijb->ib", w, out[j])) / (1.0 + w.sum(axis=1))[:, None]
    return out


def conditional_prior(field, field_sd, nbr, w, resp, mu, spread, pair_var):
    """Each voxel's Gaussian factors given its tissues and its neighbours' values ``field``
    (n, 3), known to within ``field_sd`` (n, 3), merged: (mean, precision), each (n, 3);
    precision 0 where a voxel has neither (a failed voxel).  ``pair_var`` (3,) is τ², the
    field's variance for a fully coupled pair: neighbour j's factor has the variance
    τ²/w_ij + field_sd_j²."""
    j = np.where(nbr >= 0, nbr, 0)
    with np.errstate(divide="ignore"):
        pull = np.where(w[:, :, None] > 0, 1.0 / (pair_var / w[:, :, None] + field_sd[j] ** 2), 0.0)
    pull = np.nan_to_num(pull, nan=0.0)
    prec = resp @ (1.0 / spread) + pull.sum(axis=1)
    num = resp @ (mu / spread) + (pull * np.nan_to_num(field[j])).sum(axis=1)
    mean = np.divide(num, prec, out=np.zeros_like(num), where=prec > 0)
    return mean, prec


def posterior(signal, fit, nbr, sweeps=SWEEPS):
    """Posterior summaries (n, 6, 5) of the rows of signal (n, n_b) under the spatial prior.

    Parameters
    ----------
    signal : ndarray (n, n_b)
    fit : callable
        ``fit(signal, gauss)``: the engine's summaries of the rows of a signal (n, n_b) with
        the Gaussian factors ``gauss`` = (mean, precision), each (n, 3), or None.
    nbr : ndarray (n, 6)
        From :func:`neighbours`.
    """
    summaries = fit(signal, None)
    loc, scale = locations(summaries)
    resp, mu, spread = tissues(loc, scale)
    free = np.nanmax(scale, axis=0) > 0         # a coordinate the approach holds (two-step's D): no spread,
    w = edge_weights(loc[:, free], scale[:, free], nbr, resp)           # no say in the edges, no pull
    pair_var = np.where(free, np.nanmedian(scale, axis=0) ** 2 / COUPLING, np.inf)
    s0 = summaries[:, 0, 0]
    s0 = np.where(np.isfinite(s0) & (s0 > 0), s0, 1.0)[:, None]
    field, field_sd = locations(fit(pool_signals(signal / s0, nbr, w) * s0, None))
    for _ in range(sweeps):
        summaries = fit(signal, conditional_prior(field, field_sd, nbr, w, resp, mu, spread, pair_var))
        field, field_sd = locations(summaries)
    return summaries
