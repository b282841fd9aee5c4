"""The IVIM bi-exponential model: equation, parameters, units, initialisation and bounds.

This is the one place where the signal equation lives.  Every fitter, simulator, viewer and
plot calls :func:`ivim_signal` (the fast engine's compiled kernel writes it out per voxel,
with its derivatives, and a test holds the two equal; so does the Fisher SD's kernel in
:mod:`ivim_common.kernels` with :func:`ivim_jacobian`); every output sidecar carries
:data:`EQUATION` and :data:`CONVERSION`.

The model is the original toolbox's (Lévy et al., MRM 2020)::

    S(b) = S0 · exp(-b·D) · (f · exp(-b·D*) + 1 - f)

so the perfusing pool decays with D + D* (D* here is the pseudo-diffusion coefficient in excess
of D).  b is in s/mm², D and D* in mm²/s.
"""
import numpy as np

from .constants import (APPROACHES, BOUNDS_VERSIONS, CONVERSION, DSTAR_CONVENTIONS,  # noqa: F401
                        EQUATION, MODEL_PARAMETERS as PARAM_NAMES)

# Log-linear initialisation of D (both approaches, both bounds versions).
D_INIT_BOUNDS = (0.15e-3, 4.5e-3)
D_INIT_DEFAULT = 0.5 * (D_INIT_BOUNDS[0] + D_INIT_BOUNDS[1])  # 2.325e-3
# Refinement: every varied parameter gets [1 - REFINE, 1 + REFINE] x its step-2 value.
REFINE = 0.05
REFINE_F_ZERO = (1e-12, 0.05)  # if step-2 f <= 1e-12, f gets [0, 0.05] instead

# The OSIPI code collection's defaults (its src/wrappers/OsipiBase.py, and the bounds its tests
# set): (lower, upper, start) of S0 as a factor of the signal at the lowest b (OSIPI normalises
# the signal by it), of D, f and of D*p = D + D* (mm²/s, the perfusing pool's own coefficient).
OSIPI = {"S0": (0.7, 1.3, 1.0), "D": (0.0, 5e-3, 1e-3), "Fivim": (0.0, 1.0, 0.1), "Dstar": (5e-3, 0.2, 10e-3)}
OSIPI_BVAL_THRESHOLD = 200.0   # OSIPI's segmented fitters' b threshold: here only the recorded Dinit
# The segmented approach (the field's: OSIPI's, the consensus's): D and S0(1-f) from the line on
# b >= this threshold, f from S0(1-f) and the signal at the lowest b, then D* alone.
SEGMENTED_BVAL_THRESHOLD = 200.0
SEGMENTED_DSTAR_HI = 0.1       # mm²/s, D* in excess of D (D*p up to 0.1 + D)
# Both engines search D and D* on logarithmic grids: a lower bound of 0 on either becomes this.
DIFFUSIVITY_FLOOR = 1e-5       # mm²/s


def ivim_signal(bvals, S0, D, Fivim, Dstar):
    """Signal of the IVIM model.

    Parameters
    ----------
    bvals : array_like, shape (n_b,)
        b-values in s/mm².
    S0, D, Fivim, Dstar : array_like, shape (...)
        Parameters (D, Dstar in mm²/s); broadcast together.

    Returns
    -------
    ndarray, shape (..., n_b)
    """
    b = np.asarray(bvals, dtype=float)
    S0, D, Fivim, Dstar = (np.asarray(p, dtype=float)[..., None] for p in (S0, D, Fivim, Dstar))
    e_d = np.exp(-b * D)
    return S0 * e_d * (Fivim * np.exp(-b * Dstar) + 1.0 - Fivim)


def settings(approach, bounds_version="2020", bval_threshold=None):
    """Fixed settings of an approach: b threshold of the initialisation, f and D* rules.

    ``bounds_version`` applies to one-step only: '2020' is the original's code since Dec 2020,
    '2019' the code behind the published reference maps.  two-step never changed.  segmented
    (not in the original): D and S0·(1 - f) from the line of ln S on b >= 200, f from them and
    the signal at the lowest b, then D* alone (S0, D and f held).  ``bval_threshold`` (s/mm²)
    replaces the approach's threshold.
    """
    cfg = _settings(approach, bounds_version)
    if bval_threshold is not None:
        cfg["bval_threshold"] = float(bval_threshold)
    return cfg


def _settings(approach, bounds_version):
    if approach not in APPROACHES:
        raise ValueError(f"unknown approach {approach!r} (choose from {', '.join(APPROACHES)})")
    if bounds_version not in BOUNDS_VERSIONS:
        raise ValueError(f"unknown bounds version {bounds_version!r} (choose from {', '.join(BOUNDS_VERSIONS)})")
    if bounds_version == "osipi" and approach == "one-step":
        return dict(bval_threshold=OSIPI_BVAL_THRESHOLD, f_max=OSIPI["Fivim"][1], vary_D=True)
    if approach == "two-step":
        return dict(bval_threshold=500.0, f_max=0.35, dstar_lo_x_dinit=1.0, dstar_hi=35.5e-3,
                    dstar_init="midpoint", vary_D=False)
    if approach == "segmented":
        return dict(bval_threshold=SEGMENTED_BVAL_THRESHOLD, f_max=1.0, dstar_lo_x_dinit=1.0,
                    dstar_hi=SEGMENTED_DSTAR_HI, dstar_init="midpoint", vary_D=False, vary_f=False)
    if bounds_version == "2020":
        return dict(bval_threshold=400.0, f_max=0.20, dstar_lo_x_dinit=2.0, dstar_hi=50e-3,
                    dstar_init="10xDinit", vary_D=True)
    return dict(bval_threshold=500.0, f_max=0.35, dstar_lo_x_dinit=0.8, dstar_hi=35.5e-3,
                dstar_init="midpoint", vary_D=True)


def initial_estimate(bvals, signal, bval_threshold):
    """Shared initialisation: a least-squares line of ln S against b on b >= threshold.

    D = -slope is clipped to [0.15e-3, 4.5e-3] mm²/s and the intercept refitted with D fixed,
    giving ``dinit`` and ``s0_1mf`` = S0·(1 - f) = exp(intercept).  With fewer than 2 such
    b-values: dinit = 2.325e-3 and s0_1mf = max(S).  Voxels with a non-positive signal at those
    b-values get NaN.

    Parameters
    ----------
    bvals : array_like, shape (n_b,)
    signal : array_like, shape (n_voxels, n_b)
    bval_threshold : float

    Returns
    -------
    dinit, s0_1mf : ndarray, shape (n_voxels,)
    """
    b = np.asarray(bvals, dtype=float)
    signal = np.atleast_2d(np.asarray(signal, dtype=float))
    high = b >= bval_threshold
    if np.unique(b[high]).size < 2:   # a line needs two distinct b-values, not two volumes
        n = signal.shape[0]
        return np.full(n, D_INIT_DEFAULT), signal.max(axis=1)
    bh = b[high]
    with np.errstate(invalid="ignore", divide="ignore"):
        log_s = np.log(signal[:, high])
    bc = bh - bh.mean()
    slope = (log_s - log_s.mean(axis=1, keepdims=True)) @ bc / (bc @ bc)
    dinit = np.clip(-slope, *D_INIT_BOUNDS)
    intercept = log_s.mean(axis=1) + dinit * bh.mean()
    return dinit, np.exp(intercept)


def nominal_bounds(approach, bounds_version, dinit, s0_1mf, s_low=None, user=None, dstar_convention="toolbox"):
    """Start values and bounds of the step-2 fit, per voxel.

    Parameters
    ----------
    approach, bounds_version : str
        The preset (:func:`settings`); 'osipi' takes its bounds from :data:`OSIPI`.
    dinit, s0_1mf : ndarray (n_voxels,)
        From :func:`initial_estimate`.
    s_low : ndarray (n_voxels,), optional
        Mean signal at the lowest b (:func:`lowest_b_signal`): the reference of S0 for 'osipi'.
    user : dict, optional
        ``{name: (lower, upper, start or None)}`` overriding the preset (names of
        :data:`ivim_common.constants.BOUND_NAMES`; S0 as a factor of the preset's reference,
        Dstar in ``dstar_convention``), see :func:`check_user_bounds`.
    dstar_convention : {'toolbox', 'osipi'}

    Returns
    -------
    init, lo, hi : ndarray, shape (n_voxels, 4), in the order of PARAM_NAMES.
        For two-step, D has lo = hi = init = dinit (fixed).  Where D*'s bounds are on
        D*p = D + D* (see :func:`pool_bounds`), D*'s box is the widest that D's box allows,
        [D*p_lo - D_hi, D*p_hi - D_lo]; the refinement keeps D + D* inside D*p's bounds.
    vary : ndarray of bool, shape (4,)
    """
    cfg = settings(approach, bounds_version)
    dinit = np.asarray(dinit, dtype=float)
    s = np.asarray(s0_1mf, dtype=float)
    n = dinit.shape[0]
    init, lo, hi = (np.empty((n, 4)) for _ in range(3))
    if bounds_version == "osipi" and approach == "one-step":
        s = np.asarray(s_low, dtype=float)
        for j, name in enumerate(PARAM_NAMES[:3]):
            scale = s if name == "S0" else 1.0
            lo[:, j], hi[:, j], init[:, j] = (v * scale for v in OSIPI[name])
        lo[:, 3] = hi[:, 3] = np.nan                     # from D*p's bounds (or --bounds) below
        init[:, 3] = OSIPI["Dstar"][2] - init[:, 1]
    elif approach == "segmented":
        s_low = np.asarray(s_low, dtype=float)
        init[:, 0] = lo[:, 0] = hi[:, 0] = s_low
        init[:, 1] = lo[:, 1] = hi[:, 1] = dinit
        with np.errstate(invalid="ignore", divide="ignore"):
            init[:, 2] = lo[:, 2] = hi[:, 2] = np.clip(1.0 - s / s_low, 0.0, 1.0)
        lo[:, 3] = cfg["dstar_lo_x_dinit"] * dinit
        hi[:, 3] = cfg["dstar_hi"]
        init[:, 3] = 0.5 * (lo[:, 3] + hi[:, 3])
    else:
        init[:, 0], lo[:, 0], hi[:, 0] = 1.2 * s, 0.7 * s, 1.7 * s
        if cfg["vary_D"]:
            init[:, 1], lo[:, 1], hi[:, 1] = dinit, D_INIT_BOUNDS[0], 1.2 * dinit
        else:
            init[:, 1] = lo[:, 1] = hi[:, 1] = dinit
        init[:, 2], lo[:, 2], hi[:, 2] = 0.1, 0.0, cfg["f_max"]
        lo[:, 3] = cfg["dstar_lo_x_dinit"] * dinit
        hi[:, 3] = cfg["dstar_hi"]
        init[:, 3] = 10.0 * dinit if cfg["dstar_init"] == "10xDinit" else 0.5 * (lo[:, 3] + hi[:, 3])
    held = approach == "segmented"                      # S0 and f from the data, D from the line
    vary = np.array([not held, cfg["vary_D"], not held, True])
    for name, (low, high, start) in (user or {}).items():
        j = PARAM_NAMES.index(_param_name(name))
        if j == 3 and dstar_convention == "osipi":
            continue                                     # on D*p: below
        scale = s if j == 0 else 1.0
        lo[:, j], hi[:, j] = low * scale, high * scale
        init[:, j] = init[:, j] if start is None else start * scale
    if vary[1]:
        lo[:, 1] = np.maximum(lo[:, 1], DIFFUSIVITY_FLOOR)
    pool = pool_bounds(approach, bounds_version, user, dstar_convention)
    if pool is not None:
        lo[:, 3] = np.maximum(pool[0] - hi[:, 1], DIFFUSIVITY_FLOOR)
        hi[:, 3] = pool[1] - lo[:, 1]
        init[:, 3] = pool[2] - init[:, 1]
    lo[:, 3] = np.maximum(lo[:, 3], DIFFUSIVITY_FLOOR)
    return np.clip(init, lo, hi), lo, hi, vary


def voxel_bounds(bvals, signal, approach, bounds_version="2020", user=None, dstar_convention="toolbox",
                 bval_threshold=None):
    """The start values, nominal bounds and free parameters of each voxel of ``signal``: the
    initialisation (:func:`initial_estimate`) then :func:`nominal_bounds`, as every fit uses them.

    Returns
    -------
    init, lo, hi : ndarray (n_voxels, 4); vary : ndarray of bool (4,)
    """
    cfg = settings(approach, bounds_version, bval_threshold)
    dinit, s0_1mf = initial_estimate(bvals, signal, cfg["bval_threshold"])
    return nominal_bounds(approach, bounds_version, dinit, s0_1mf, lowest_b_signal(bvals, signal), user,
                          dstar_convention)


def _param_name(name):
    """The model's name of a --bounds name ('f' is Fivim)."""
    return "Fivim" if name == "f" else name


def pool_bounds(approach, bounds_version, user=None, dstar_convention="toolbox"):
    """(lower, upper, start) of D*p = D + D* where the bounds of D* are set on it, else None.

    They are on D*p with the 'osipi' preset (unless --bounds sets Dstar in the toolbox's
    convention) and wherever --bounds sets Dstar in the 'osipi' convention.
    """
    user = user or {}
    if "Dstar" in user:
        if dstar_convention != "osipi":
            return None
        low, high, start = user["Dstar"]
        return low, high, OSIPI["Dstar"][2] if start is None else start
    if bounds_version == "osipi" and approach == "one-step":
        return OSIPI["Dstar"]
    return None


def refinement_limits(approach, bounds_version, user=None, dstar_convention="toolbox"):
    """What keeps step 3 inside the user's bounds, for :func:`refinement_bounds`: None with the
    toolbox's presets ('2020', '2019': the ±5 % box is not clipped, as in the original), else
    ``{"pool": pool_bounds(...)}`` ('osipi' or --bounds: the box is clipped to the bounds)."""
    if not user and not (bounds_version == "osipi" and approach == "one-step"):
        return None
    return {"pool": pool_bounds(approach, bounds_version, user, dstar_convention)}


def check_bvals(bvals, approach, bounds_version="2020", bval_threshold=None):
    """ValueError (one line) where the b-values cannot give what the approach needs: two-step and
    segmented hold D at the initialisation line's, which needs two distinct b-values at or above
    the threshold (one-step falls back to a default start there)."""
    if approach == "one-step":
        return
    threshold = settings(approach, bounds_version, bval_threshold)["bval_threshold"]
    high = np.unique(np.asarray(bvals, dtype=float))
    high = high[high >= threshold]
    if high.size < 2:
        raise ValueError(f"{approach} takes D from the line of ln S on b >= {threshold:g} s/mm^2, which needs "
                         f"2 distinct b-values there (found {high.size}); lower it with --b-threshold")


def check_user_bounds(user, approach, dstar_convention="toolbox"):
    """Check --bounds against the approach and convention; raises ValueError (one line)."""
    for name, (low, high, start) in (user or {}).items():
        if _param_name(name) not in PARAM_NAMES:
            raise ValueError(f"bounds: unknown parameter {name!r} (choose from S0, D, f, Dstar)")
        if not (np.isfinite(low) and np.isfinite(high) and 0 <= low <= high):
            raise ValueError(f"bounds: {name} needs 0 <= lower <= upper (got {low:g}:{high:g})")
        if start is not None and not low <= start <= high:
            raise ValueError(f"bounds: the start of {name}, {start:g}, is outside [{low:g}, {high:g}]")
    user = user or {}
    if "D" in user and approach != "one-step":
        raise ValueError(f"bounds: D is fixed at Dinit in {approach}; its bounds cannot be set")
    if approach == "segmented" and ({"S0", "f", "Fivim"} & set(user)):
        raise ValueError("bounds: S0 and f are held in segmented (from the signal); only Dstar's bounds can be set")
    if "f" in user and user["f"][1] > 1 or "Fivim" in user and user["Fivim"][1] > 1:
        raise ValueError("bounds: f is a fraction, its upper bound must be <= 1")
    if dstar_convention == "osipi" and "Dstar" in user and "D" in user and user["Dstar"][1] <= user["D"][0]:
        raise ValueError("bounds: D*p = D + D* must exceed D: Dstar's upper bound must exceed D's lower bound")


def to_dstar_convention(maps, dstar_convention):
    """The maps (dict of arrays, in place) with Dstar and FivimXDstar in ``dstar_convention``:
    'toolbox' leaves D* (in excess of D); 'osipi' writes D*p = D + D* and f·D*p."""
    if dstar_convention not in DSTAR_CONVENTIONS:
        raise ValueError(f"unknown D* convention {dstar_convention!r} (choose from {', '.join(DSTAR_CONVENTIONS)})")
    if dstar_convention == "osipi":
        maps["Dstar"] = maps["Dstar"] + maps["D"]
        maps["FivimXDstar"] = maps["Fivim"] * maps["Dstar"]
    for kind in ("sd", "ci_low", "ci_high"):        # the uncertainty of D*p = D + D*, where given
        pool = maps.pop(f"Dstar_pool_{kind}", None)
        if dstar_convention == "osipi" and f"Dstar_{kind}" in maps:
            maps[f"Dstar_{kind}"] = np.full_like(maps["Dstar"], np.nan) if pool is None else pool
    return maps


def excess_dstar(dstar, D, dstar_convention):
    """D* in the model's (toolbox) convention from a Dstar written in ``dstar_convention``."""
    return np.asarray(dstar) - np.asarray(D) if dstar_convention == "osipi" else dstar


def lowest_b_signal(bvals, signal):
    """Mean signal (n_voxels,) of the volumes at the lowest b: the reference of S0 for 'osipi'."""
    b = np.asarray(bvals, dtype=float)
    return np.atleast_2d(np.asarray(signal, dtype=float))[:, b == b.min()].mean(axis=1)


def refinement_bounds(params, vary, lo, hi, limits=None):
    """The ±5 % box of step 3 around step-2 values.

    Where step-2 f <= 1e-12, the box of f is [0, 0.05] and, since the signal then does not
    depend on D*, the box of D* is the nominal range ±5 % (a search, not a polish).  Fixed
    parameters keep lo = hi = value.  With ``limits`` None (the toolbox's presets) the box is
    not clipped to the nominal bounds, as in the original toolbox; with ``limits`` (from
    :func:`refinement_limits`: the 'osipi' preset or the user's bounds) it is clipped to them,
    and where D*'s bounds are on D*p = D + D* (``limits["pool"]``), D*'s box is narrowed so that
    every point of the box has D + D* within them; where that leaves nothing of the ±5 % box
    (step 2 ended outside them), D* is searched over all D*p's bounds allow, and where D's box
    is wider than D*p's bounds, D is held at its step-2 value.

    Parameters
    ----------
    params : ndarray, shape (n_voxels, 4)
        Step-2 values.
    vary : ndarray of bool, shape (4,)
    lo, hi : ndarray, shape (n_voxels, 4)
        The nominal bounds of step 2.
    limits : dict or None

    Returns
    -------
    lo, hi : ndarray, shape (n_voxels, 4)
    """
    params = np.asarray(params, dtype=float)
    scale = np.where(vary, REFINE, 0.0)
    r_lo = params * (1.0 - scale)
    r_hi = params * (1.0 + scale)
    f_zero = f_is_zero(params)
    r_lo[f_zero & vary[2], 2] = 0.0
    r_hi[f_zero & vary[2], 2] = REFINE_F_ZERO[1]
    r_lo[f_zero, 3] = np.asarray(lo)[f_zero, 3] * (1 - REFINE)
    r_hi[f_zero, 3] = np.asarray(hi)[f_zero, 3] * (1 + REFINE)
    if limits is None:
        return r_lo, r_hi
    r_lo, r_hi = np.clip(r_lo, lo, hi), np.clip(r_hi, lo, hi)
    if limits.get("pool") is not None:
        p_lo, p_hi = limits["pool"][:2]
        narrow = (p_hi - p_lo) < (r_hi[:, 1] - r_lo[:, 1])
        r_lo[narrow, 1] = r_hi[narrow, 1] = np.clip(params[narrow, 1], lo[narrow, 1], hi[narrow, 1])
        d_lo = np.maximum(p_lo - r_lo[:, 1], DIFFUSIVITY_FLOOR)
        d_hi = p_hi - r_hi[:, 1]
        r_lo[:, 3], r_hi[:, 3] = np.maximum(r_lo[:, 3], d_lo), np.minimum(r_hi[:, 3], d_hi)
        outside = r_lo[:, 3] > r_hi[:, 3]
        r_lo[outside, 3], r_hi[outside, 3] = d_lo[outside], d_hi[outside]
    return r_lo, r_hi


def needs_search(params, r_lo, r_hi):
    """Where step 3 searches its box rather than polishing the step-2 point: where step-2 f is
    0 (D* undetermined) or the point lies outside the box (see :func:`refinement_bounds`)."""
    params = np.asarray(params)
    return f_is_zero(params) | ((params < r_lo) | (params > r_hi)).any(axis=1)


def f_is_zero(params):
    """Where f (column 2 of params (n, 4)) is at most the refinement rule's zero, 1e-12."""
    return np.asarray(params)[:, 2] <= REFINE_F_ZERO[0]


def settle_undetermined_dstar(params, r_lo, r_hi):
    """Where the refined f is 0 the signal does not depend on D*: report D* at the middle of
    its step-3 box (the expectation of a random draw in it), in place."""
    flat = f_is_zero(params)
    params[flat, 3] = 0.5 * (r_lo[flat, 3] + r_hi[flat, 3])
    return params


def valid_voxels(signal, bvals=None, approach="one-step", bounds_version="2020"):
    """True where every sample of a voxel is finite and positive (others are marked failed).

    With the 'osipi' preset (one-step), whose bounds need no log-linear initialisation, a
    non-positive sample is kept (noise makes them where a fast-decaying signal, such as blood's,
    reaches 0, and least squares fits them as they are): there a voxel needs finite samples and a
    positive mean signal at the lowest b only.
    """
    signal = np.asarray(signal, dtype=float)
    with np.errstate(invalid="ignore"):
        finite = np.isfinite(signal).all(axis=1)
        if bounds_version == "osipi" and approach == "one-step" and bvals is not None:
            return finite & (lowest_b_signal(bvals, signal) > 0)
        return finite & (signal > 0).all(axis=1)


def goodness_of_fit(bvals, signal, params, n_varied):
    """RSS, AIC (lmfit's n·ln(RSS/n) + 2k) and R² (on the signal) of parameters (n_voxels, 4)."""
    resid = ivim_signal(bvals, *params.T) - signal
    rss = np.einsum("ij,ij->i", resid, resid)
    n_b = signal.shape[1]
    with np.errstate(divide="ignore", invalid="ignore"):
        aic = n_b * np.log(np.maximum(rss, 1e-250 * n_b) / n_b) + 2 * n_varied  # floor as lmfit
        tss = ((signal - signal.mean(axis=1, keepdims=True)) ** 2).sum(axis=1)
        r2 = 1.0 - rss / tss
    return rss, aic, r2


def n_free(approach):
    """Parameters an approach estimates from the data: 4 (one-step), 3 (two-step: D fixed at
    Dinit; segmented: D, f and D*, S0 taken as the signal at the lowest b) -- the k of the
    information criteria, and the least number of distinct b-values."""
    return len(PARAM_NAMES) - (1 if approach in ("two-step", "segmented") else 0)


def bounds_description(approach, bounds_version, user=None, dstar_convention="toolbox", bval_threshold=None):
    """Human-readable bounds, for --help and the sidecars (the user's bounds included)."""
    cfg = settings(approach, bounds_version, bval_threshold)
    init = (f"least-squares line of ln S vs b on b >= {cfg['bval_threshold']:g} s/mm^2; "
            "Dinit = -slope clipped to [0.15e-3, 4.5e-3], intercept refitted; "
            "S0(1-f) = exp(intercept); <2 such b: Dinit = 2.325e-3, S0(1-f) = max(S)")
    toolbox_refinement = ("each varied parameter refitted within +/-5% of its step-2 value, not clipped "
                          "to the bounds above; where step-2 f <= 1e-12: f in [0, 0.05] and D* in its "
                          "bounds above +/-5%; where the refined f <= 1e-12, D* (undetermined) is reported "
                          "at the middle of that box (both engines)")
    if bounds_version == "osipi" and approach == "one-step":
        (s_lo, s_hi, s_0), (d_lo, d_hi, d_0), (f_lo, f_hi, f_0), (p_lo, p_hi, p_0) = OSIPI.values()
        out = {"initialisation": init + " (Dinit is not used by these bounds)",
               "S0": (f"[{s_lo:g}, {s_hi:g}]*S(lowest b) (mean of the lowest-b volumes), "
                      f"starting at {s_0:g}*S(lowest b)"),
               "D": f"[{d_lo:g}, {d_hi:g}] starting at {d_0:g}",
               "Fivim": f"[{f_lo:g}, {f_hi:g}] starting at {f_0:g}",
               "Dstar": f"D*p = D + D* in [{p_lo:g}, {p_hi:g}] starting at {p_0:g}"}
    elif approach == "segmented":
        out = {"initialisation": init,
               "S0": "held at S(lowest b), the mean of the lowest-b volumes",
               "D": "held at Dinit",
               "Fivim": "held at 1 - S0(1-f)/S(lowest b), clipped to [0, 1]",
               "Dstar": (f"[{cfg['dstar_lo_x_dinit']:g}*Dinit, {cfg['dstar_hi']:g}]: the one parameter fitted "
                         "(to all b-values)")}
    else:
        d = ("D in [0.15e-3, 1.2*Dinit] starting at Dinit" if cfg["vary_D"] else "D fixed at Dinit")
        start = "10*Dinit" if cfg["dstar_init"] == "10xDinit" else "the midpoint"
        out = {"initialisation": init,
               "S0": "[0.7, 1.7]*S0(1-f), starting at 1.2*S0(1-f)",
               "D": d,
               "Fivim": f"[0, {cfg['f_max']:g}] starting at 0.1",
               "Dstar": (f"[{cfg['dstar_lo_x_dinit']:g}*Dinit, {cfg['dstar_hi']:g}] starting at {start}")}
    reference = "S(lowest b)" if bounds_version == "osipi" and approach == "one-step" else "S0(1-f)"
    for name, (low, high, start) in (user or {}).items():
        key = _param_name(name)
        text = (f"[{low:g}, {high:g}]" + (f"*{reference}" if key == "S0" else "")
                + ("" if start is None else f" starting at {start:g}") + " (--bounds)")
        if key == "Dstar":
            text = ("D*p = D + D* in " if dstar_convention == "osipi" else "D* in ") + text
        out[key] = text
    if refinement_limits(approach, bounds_version, user, dstar_convention) is None:
        out["refinement"] = toolbox_refinement
    else:
        out["refinement"] = ("as the toolbox's (+/-5% of each step-2 value; f = 0: f in [0, 0.05], D* over its "
                             "range) but clipped to the bounds above, so that every result lies inside them; "
                             "where D*'s bounds are on D*p = D + D*, D*'s box keeps D + D* inside them (a "
                             "search over the D* they allow where step 2 ended outside them)")
    out["floor"] = (f"a lower bound of D or D* below {DIFFUSIVITY_FLOOR:g} mm^2/s is raised to it "
                    "(the engines' grids are logarithmic)")
    return out


# ----------------------------------------------------------------------------------------------
# How far to trust a fit: the model's side (its Jacobian, the bounds reached, the criteria);
# the Fisher SD, the mono-exponential fit and the bootstrap are in trust.py

BOUND_TOLERANCE = 1e-3   # a parameter within 0.1 % of its box's width of a bound is "at" it


def ivim_jacobian(bvals, S0, D, Fivim, Dstar):
    """Derivatives of :func:`ivim_signal` with respect to (S0, D, Fivim, Dstar).

    Parameters
    ----------
    bvals : array_like, shape (n_b,)
        b-values in s/mm².
    S0, D, Fivim, Dstar : array_like, shape (...)
        Parameters (D, Dstar in mm²/s); broadcast together.

    Returns
    -------
    ndarray, shape (..., n_b, 4)
        Columns in the order of PARAM_NAMES (signal units per unit of each parameter).

    Examples
    --------
    >>> jac = ivim_jacobian([0, 100, 800], 1000.0, 1e-3, 0.1, 20e-3)
    >>> step = 1e-8                                     # mm²/s, on D*
    >>> numeric = (ivim_signal([0, 100, 800], 1000.0, 1e-3, 0.1, 20e-3 + step)
    ...            - ivim_signal([0, 100, 800], 1000.0, 1e-3, 0.1, 20e-3 - step)) / (2 * step)
    >>> bool(np.allclose(jac[..., 3], numeric, rtol=1e-6, atol=1e-3))
    True
    """
    b = np.asarray(bvals, dtype=float)
    S0, D, Fivim, Dstar = (np.asarray(p, dtype=float)[..., None] for p in (S0, D, Fivim, Dstar))
    e_d = np.exp(-b * D)
    e_p = np.exp(-b * Dstar)
    tissue_and_blood = e_d * (Fivim * e_p + 1.0 - Fivim)
    return np.stack([tissue_and_blood,                      # dS/dS0
                     -b * S0 * tissue_and_blood,            # dS/dD
                     S0 * e_d * (e_p - 1.0),                # dS/df
                     -b * S0 * Fivim * e_d * e_p], axis=-1)  # dS/dD*


def bounds_hit(params, lo, hi, vary, pool=None):
    """Which free parameters ended at a bound of their nominal (step-2) box, as bit flags.

    A parameter is at its lower bound when it is at most ``lo + 0.001·(hi - lo)``, at its upper
    bound when at least ``hi - 0.001·(hi - lo)`` (the step-3 refinement is not clipped to the
    nominal box, so a value beyond it counts as at it).  Bit ``2j`` (lower) and ``2j + 1``
    (upper) of parameter j in PARAM_NAMES order: 1 S0 low, 2 S0 high, 4 D low, 8 D high,
    16 f low, 32 f high, 64 D* low, 128 D* high.  Fixed parameters (two-step D) are never flagged.

    Parameters
    ----------
    params, lo, hi : ndarray, shape (n_voxels, 4)
    vary : ndarray of bool, shape (4,)
    pool : (float, float), optional
        Bounds of D*p = D + D*, where D*'s are set on it (:func:`pool_bounds`).

    Returns
    -------
    flags : ndarray of int64, shape (n_voxels,)
    at_lo, at_hi : ndarray of bool, shape (n_voxels, 4)

    Examples
    --------
    >>> lo, hi = np.array([[500.0, 0.15e-3, 0.0, 2e-3]]), np.array([[1500.0, 1.2e-3, 0.2, 50e-3]])
    >>> int(bounds_hit(np.array([[1000.0, 1e-3, 0.0, 50e-3]]), lo, hi, np.ones(4, bool))[0][0])
    144
    """
    params, lo, hi = (np.array(a, dtype=float) for a in (params, lo, hi))
    if pool is not None:             # D*'s bounds are on D*p = D + D*: D* is at a bound when D*p is
        params[:, 3] += params[:, 1]
        lo[:, 3], hi[:, 3] = pool[0], pool[1]
    with np.errstate(invalid="ignore"):          # an unbounded side (inf) is never hit
        margin = BOUND_TOLERANCE * (hi - lo)
        at_lo = vary & (params <= lo + margin)
        at_hi = vary & (params >= hi - margin) & ~at_lo
    weights = 2 ** np.arange(0, 2 * len(PARAM_NAMES), 2)
    return at_lo @ weights + at_hi @ (2 * weights), at_lo, at_hi


def information_criteria(rss, n_b, k):
    """AICc and BIC of least-squares fits with k free parameters to n_b samples.

    AICc = n·ln(RSS/n) + 2k + 2k(k + 1)/(n − k − 1) (NaN when n <= k + 1) and
    BIC = n·ln(RSS/n) + k·ln(n), with lmfit's floor on RSS/n (as :func:`goodness_of_fit`).

    Returns
    -------
    aicc, bic : ndarray, shape of rss
    """
    rss = np.asarray(rss, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        base = n_b * np.log(np.maximum(rss, 1e-250 * n_b) / n_b)
    correction = 2.0 * k * (k + 1) / (n_b - k - 1) if n_b > k + 1 else np.nan
    return base + 2 * k + correction, base + k * np.log(n_b)


def repeat_noise_sd(bvals, signal):
    """Noise SD of each voxel from the scatter of its repeated b-values (pooled, ddof 1 per
    group), or None where no b-value is repeated: the σ̂ that needs no model.

    Parameters
    ----------
    bvals : array_like, shape (n_b,)
    signal : ndarray, shape (n_voxels, n_b)

    Returns
    -------
    ndarray, shape (n_voxels,), or None
    """
    b = np.asarray(bvals, dtype=float)
    values, groups, counts = np.unique(b, return_inverse=True, return_counts=True)
    if counts.max() < 2:
        return None
    signal = np.atleast_2d(np.asarray(signal, dtype=float))
    sums = np.zeros((len(signal), len(values)))
    np.add.at(sums.T, groups, signal.T)
    resid = signal - (sums / counts)[:, groups]
    return np.sqrt(np.einsum("vb,vb->v", resid, resid) / (len(b) - len(values)))
