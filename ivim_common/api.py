"""The public API: :class:`IvimModel` (an acquisition and how to fit it) and :class:`IvimFit`
(the maps), in the shape of dipy's ``reconst`` models.

Every fit of the toolbox goes through here: the scripts, the simulations and the viewer.
"""
import functools
import time

import numpy as np

from . import compiled, engines, model, spatial, trust, voxelpool
from .io.bids import write_bids_maps
from .io.provenance import model_record, provenance
from .io.results import median_iqr, read_fit_folder, write_fit_folder
from .constants import BOUND_BITS, CORE_MAPS, MAP_FILES, MODEL_CHOICE_CRITERIA, UNCERTAINTY


def voxel_seeds(seed, voxel_ids):
    """Two 32-bit seeds per voxel (step 2, refinement) from (seed, flat voxel index).

    They do not depend on chunking or worker count.
    """
    return np.array([np.random.SeedSequence([int(seed), int(i)]).generate_state(2)
                     for i in voxel_ids], dtype=np.uint32).reshape(-1, 2)


def fit_voxels(bvals, signal, approach="one-step", bounds_version="2020", engine="fast",
               seed=0, voxel_ids=None, bounds=None, dstar_convention="toolbox", engine_options=None,
               model_choice="aicc", bootstrap=0, quality=True, bval_threshold=None):
    """Fit the IVIM model to many voxels, in this process: the work of one chunk.

    Parameters
    ----------
    bvals : array_like (n_b,)
        b-values in s/mm².
    signal : array_like (n_voxels, n_b)
    approach : {'one-step', 'two-step', 'segmented'}
    bounds_version : {'2020', '2019', 'osipi'}
        One-step bounds (ignored by the others).
    engine : str
        A name of :data:`ivim_common.engines.ENGINES`.
    seed : int
        Seed of the engines that draw random numbers (each voxel's from it and its index).
    voxel_ids : array_like of int (n_voxels,), optional
        Flat indices of the voxels in the volume, from which each voxel's seed derives
        (default ``arange(n_voxels)``).
    bounds : dict, optional
        The user's bounds, ``{name: (lower, upper, start or None)}`` (see
        :func:`ivim_common.model.nominal_bounds`); every result then lies inside them.
    dstar_convention : {'toolbox', 'osipi'}
        What the Dstar and FivimXDstar maps hold: D* in excess of D, or D*p = D + D*.
    engine_options : dict, optional
        Passed to the engine's ``fit`` (see :mod:`ivim_common.engines`).
    bval_threshold : float, optional
        b (s/mm²) from which the initialisation's line of ln S is fitted (default: the
        approach's: 400 or 500, 200 for segmented).
    model_choice : {'aicc', 'bic'}
        Criterion of ``model_choice`` (IVIM against the mono-exponential).
    bootstrap : int
        Residual-bootstrap refits per voxel (0: none); see :func:`ivim_common.trust.bootstrap_uncertainty`.
    quality : bool
        Compute the uncertainty, model-choice and quality maps (False: NaN, as the
        bootstrap's refits need).

    Returns
    -------
    dict of ndarray (n_voxels,)
        The maps of :data:`ivim_common.constants.CORE_MAPS`; ``<param>_sd`` (Fisher
        information of least-squares engines, the engine's own where it gives one, the
        bootstrap's with ``bootstrap``) and ``<param>_ci_low``, ``<param>_ci_high`` where the
        engine or the bootstrap gives them.  Failed voxels
        (non-finite or non-positive signal, or a fit that returned non-finite values) have NaN
        parameters and exception = 1.
    """
    fitter = engines.get(engine)
    bvals = np.asarray(bvals, dtype=float)
    signal = np.atleast_2d(np.asarray(signal, dtype=float))
    n = signal.shape[0]
    voxel_ids = np.arange(n) if voxel_ids is None else np.asarray(voxel_ids)
    ok = model.valid_voxels(signal, bvals, approach, bounds_version)
    init, lo, hi, vary = model.voxel_bounds(bvals, signal[ok], approach, bounds_version, bounds, dstar_convention,
                                            bval_threshold)
    options = dict(engine_options or {})
    limits = model.refinement_limits(approach, bounds_version, bounds, dstar_convention)
    if limits is not None:                  # only the user's bounds need it
        options["limits"] = limits
    seeds = voxel_seeds(seed, voxel_ids[ok]) if getattr(fitter, "RANDOM", False) else None
    result = fitter.fit(bvals, signal[ok], init, lo, hi, vary, seeds, **options)
    finite = np.isfinite(result["params"]).all(axis=1)      # a fit that did not give numbers failed too
    fitted = ok.copy()
    fitted[ok] = finite
    params = result["params"][finite]

    out = {name: np.full(n, np.nan) for name in CORE_MAPS}
    for j, name in enumerate(model.PARAM_NAMES):
        out[name][fitted] = params[:, j]
        for kind in UNCERTAINTY:
            if kind in result:
                out[f"{name}_{kind}"] = np.full(n, np.nan)
                out[f"{name}_{kind}"][fitted] = result[kind][finite, j]
    for k, kind in enumerate(UNCERTAINTY):          # D*p's, where the engine gives them
        if "pool" in result:
            out[f"Dstar_pool_{kind}"] = np.full(n, np.nan)
            out[f"Dstar_pool_{kind}"][fitted] = result["pool"][finite, k]
    out["FivimXDstar"][fitted] = params[:, 2] * params[:, 3]
    rss, out["AIC"][fitted], out["R2"][fitted] = model.goodness_of_fit(bvals, signal[fitted], params,
                                                                       model.n_free(approach))
    out["exception"] = np.where(fitted, 0.0, 1.0)
    if quality:
        box_lo, box_hi = result.get("lo", lo)[finite], result.get("hi", hi)[finite]   # the engine's box
        maps = trust.trust_maps(bvals, signal[fitted], params, rss, box_lo, box_hi, vary, model.n_free(approach),
                                model_choice, with_sd="sd" not in result,
                                pool=(limits or {}).get("pool"))
        if bootstrap:
            refit = functools.partial(fit_voxels, bvals, seed=seed, quality=False, approach=approach,
                                      bounds_version=bounds_version, engine=engine, bounds=bounds,
                                      dstar_convention=dstar_convention, engine_options=engine_options,
                                      bval_threshold=bval_threshold)
            maps.update(trust.bootstrap_uncertainty(
                bvals, signal[fitted], params, voxel_ids[fitted], bootstrap, seed, model.n_free(approach),
                refit, dstar_convention))
        for name, values in maps.items():
            out[name] = np.full(n, np.nan)
            out[name][fitted] = values
    return model.to_dstar_convention(out, dstar_convention)


class IvimModel:
    """The IVIM model of one acquisition, and how to fit it.

    ``S(b) = S0·exp(-b·D)·(f·exp(-b·D*) + 1 - f)``: the perfusing pool decays with D + D*
    (see :mod:`ivim_common.model`).  b in s/mm², D and D* in mm²/s.

    Parameters
    ----------
    bvals : array_like (n_b,) or object with a ``bvals`` attribute
        b-values in s/mm², one per volume (a dipy ``GradientTable`` works).
    approach : {'one-step', 'two-step', 'segmented'}
        one-step: S0, D, f, D* free; two-step: D fixed at the log-linear estimate of the high b;
        segmented: D from that line (b >= 200), f from its intercept and the signal at the
        lowest b, then D* alone (S0 held at the signal at the lowest b).
    bounds_version : {'2020', '2019', 'osipi'}
        Bounds of one-step (the others have one set each): '2020' the original's code since
        Dec 2020, '2019' the code behind its published maps, 'osipi' the OSIPI code
        collection's defaults.
    engine : str
        'fast' (compiled least squares, default), 'lmfit' (the original's differential
        evolution, about 1-2 s per voxel) or 'bayes' (posterior means, with SD and 95 %
        intervals): see :data:`ivim_common.engines.ENGINES`.
    bounds : dict, optional
        Bounds overriding the preset's, ``{name: (lower, upper)}`` or ``(lower, upper,
        start)``, names S0 (a factor of the preset's reference signal), D, f, Dstar (in
        ``dstar_convention``); every result then lies inside them.
    dstar_convention : {'toolbox', 'osipi'}
        What ``Dstar`` (and ``FivimXDstar``) hold: 'toolbox' D* in excess of D (default),
        'osipi' the perfusing pool's D*p = D + D* (dipy, osipy, the OSIPI code collection).
    bval_threshold : float, optional
        b (s/mm²) from which the initialisation's line of ln S is fitted (default: the
        approach's: 400 one-step 2020, 500 one-step 2019 and two-step, 200 segmented and osipi).
    **engine_options
        Options of the engine's ``image_options`` (e.g. ``prior='log'`` or ``prior='spatial'``
        for 'bayes', see :data:`ivim_common.engines.OPTIONS`).

    Examples
    --------
    >>> import numpy as np
    >>> from ivim_common import IvimModel
    >>> from ivim_common.model import ivim_signal
    >>> bvals = [0, 10, 20, 50, 100, 200, 400, 600, 800]
    >>> signal = ivim_signal(bvals, 1000.0, 1e-3, 0.1, 20e-3)      # S0, D, f, D*
    >>> fit = IvimModel(bvals).fit(signal)
    >>> print(f"f = {fit.f:.3f}, D = {fit.D:.2e} mm²/s, D* = {fit.Dstar:.2e} mm²/s")
    f = 0.100, D = 1.00e-03 mm²/s, D* = 2.00e-02 mm²/s
    """

    def __init__(self, bvals, approach="one-step", bounds_version="2020", engine="fast", bounds=None,
                 dstar_convention="toolbox", bval_threshold=None, **engine_options):
        bvals = np.asarray(getattr(bvals, "bvals", bvals), dtype=float)
        model.settings(approach, bounds_version)            # checks both
        fitter = engines.get(engine)
        engines.check_approach(engine, approach)
        model.check_bvals(bvals, approach, bounds_version, bval_threshold)
        if engine_options and not hasattr(fitter, "image_options"):
            raise ValueError(f"engine {engine!r} takes no options (got {', '.join(engine_options)})")
        if dstar_convention not in model.DSTAR_CONVENTIONS:
            raise ValueError(f"unknown D* convention {dstar_convention!r} (choose from "
                             f"{', '.join(model.DSTAR_CONVENTIONS)})")
        bounds = {k: (tuple(v) + (None,))[:3] for k, v in (bounds or {}).items()} or None
        model.check_user_bounds(bounds, approach, dstar_convention)
        self.bounds, self.dstar_convention = bounds, dstar_convention
        if bval_threshold is not None and not 0 <= bval_threshold < np.inf:
            raise ValueError(f"bval_threshold: expected a b-value >= 0, got {bval_threshold}")
        self.bval_threshold = bval_threshold
        if bvals.ndim != 1 or not np.isfinite(bvals).all() or (bvals < 0).any():
            raise ValueError(f"bvals: expected finite b-values >= 0 in one row, got shape {bvals.shape}")
        if np.unique(bvals).size < model.n_free(approach):
            raise ValueError(f"bvals: {np.unique(bvals).size} distinct b-values, {approach} needs at "
                             f"least {model.n_free(approach)}")
        self.bvals, self.approach, self.bounds_version, self.engine = bvals, approach, bounds_version, engine
        self.engine_options = engine_options
        self.engine_record = {}         # what the last fit's engine options were, for the sidecar

    def __repr__(self):
        return (f"IvimModel({self.bvals.size} b-values, approach={self.approach!r}, "
                f"bounds_version={self.bounds_version!r}, engine={self.engine!r}, bounds={self.bounds!r}, "
                f"dstar_convention={self.dstar_convention!r})")

    def fit_voxels(self, signal, voxel_ids=None, jobs=1, seed=0, chunk_size=None, progress=False,
                   model_choice="aicc", bootstrap=0, pool=None, shape=None):
        """Fit rows of signal (n_voxels, n_b) in ``jobs`` processes (or those of ``pool``, a
        :class:`ivim_common.voxelpool.WorkerPool` reused across calls); maps as 1-D arrays.

        ``voxel_ids`` are the voxels' seed keys (default: their row numbers), and their flat
        indices in a volume of ``shape`` where given (the spatial prior needs it); the results
        do not depend on ``jobs`` or ``chunk_size``.  Without ``chunk_size`` and ``pool``, a job of
        at most the engine's ``IN_PROCESS_VOXELS`` voxel fits (bootstrap refits included) stays
        in this process.  ``model_choice`` and ``bootstrap`` as in
        :meth:`fit`.  Returns the dict of :func:`fit_voxels`.
        """
        if model_choice not in MODEL_CHOICE_CRITERIA:
            raise ValueError(f"unknown model choice {model_choice!r} (choose from {', '.join(MODEL_CHOICE_CRITERIA)})")
        fitter = engines.get(self.engine)
        compiled.prepare([fitter, trust], announce=progress)   # once here, so workers load them
        signal = np.asarray(signal, dtype=float).reshape(-1, self.bvals.size)
        small = len(signal) * (1 + bootstrap) <= getattr(fitter, "IN_PROCESS_VOXELS", 0)
        if small and chunk_size is None and pool is None:
            jobs = 1                             # starting workers would cost more than the work
        if not len(signal):
            return {name: np.empty(0) for name in CORE_MAPS}
        voxel_ids = np.arange(len(signal)) if voxel_ids is None else np.asarray(voxel_ids)
        options = {}
        if hasattr(fitter, "image_options"):
            valid = model.valid_voxels(signal, self.bvals, self.approach, self.bounds_version)
            volume = None if shape is None else (shape, voxel_ids[valid])
            options, self.engine_record = fitter.image_options(self, signal[valid], jobs, volume,
                                                               **self.engine_options)
        if "neighbours" in options:         # rows that depend on their neighbours: one chunk
            if bootstrap:
                raise ValueError(spatial.NO_BOOTSTRAP)
            chunk_size = len(signal)
        return voxelpool.map_chunks(fit_voxels, signal, voxel_ids, jobs=jobs, pool=pool,
                                    chunk_size=chunk_size or max(1, fitter.CHUNK_SIZE // (1 + bootstrap)),
                                    progress=progress, model_choice=model_choice, bootstrap=bootstrap,
                                    bvals=self.bvals, approach=self.approach,
                                    bounds_version=self.bounds_version, engine=self.engine, seed=seed,
                                    bounds=self.bounds, dstar_convention=self.dstar_convention,
                                    bval_threshold=self.bval_threshold,
                                    engine_options=options)

    def fit(self, data, mask=None, jobs=1, seed=0, chunk_size=None, progress=False, model_choice="aicc",
            bootstrap=0):
        """Fit every voxel of ``data`` (in ``mask``).

        Parameters
        ----------
        data : array_like (..., n_b)
            Signal, any number of leading axes (one voxel, a list of voxels, a volume).
        mask : array_like of bool (data.shape[:-1]), optional
            Voxels to fit (default: all).  A voxel with a NaN, Inf or non-positive sample is
            marked failed (with the 'osipi' preset, see :func:`ivim_common.model.valid_voxels`).
        jobs : int
            Worker processes (1: this process).  The maps do not depend on it.
        seed : int
            Seed of the engines that draw random numbers (lmfit); recorded.
        chunk_size : int, optional
            Voxels per chunk of work (default: the engine's).
        progress : bool
            A progress bar on stderr (when it is a terminal).
        model_choice : {'aicc', 'bic'}
            Criterion of the ``model_choice`` map (IVIM or the mono-exponential).
        bootstrap : int
            Residual-bootstrap refits per voxel, with this engine (0: none, the default): the
            ``<param>_sd`` maps then come from them, with ``<param>_ci_low``/``_ci_high``, their
            2.5/97.5 % percentiles.  Seeded per voxel from ``seed``.

        Returns
        -------
        IvimFit
        """
        data = np.asarray(data, dtype=float)
        if data.ndim < 1 or data.shape[-1] != self.bvals.size:
            raise ValueError(f"data: expected shape (..., {self.bvals.size}), got {data.shape}")
        shape = data.shape[:-1]
        mask = np.ones(shape, dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
        if mask.shape != shape:
            raise ValueError(f"mask: expected shape {shape}, got {mask.shape}")
        start = time.perf_counter()
        flat = self.fit_voxels(data[mask], np.flatnonzero(mask), jobs=jobs, seed=seed,
                               chunk_size=chunk_size, progress=progress, model_choice=model_choice,
                               bootstrap=bootstrap, shape=shape)
        maps = {}
        for name, values in flat.items():
            maps[name] = np.full(shape, np.nan)
            maps[name][mask] = values
        fit = IvimFit(self, maps, mask, seed=seed, jobs=jobs, run_time_s=time.perf_counter() - start)
        fit.choice_criterion, fit.bootstrap = model_choice, bootstrap
        fit.noise_sd = model.repeat_noise_sd(self.bvals, data[mask])
        return fit


def dstar_convention_of(fit):
    """The D* convention of a fit's maps: its model's, else its sidecar's, else 'toolbox'."""
    return (getattr(fit.model, "dstar_convention", None) or (fit.sidecar or {}).get("dstar_convention")
            or "toolbox")


class IvimFit:
    """The maps of an :class:`IvimModel` fit, each of shape ``mask.shape``.

    The maps are properties: ``S0``, ``D``, ``Fivim`` (also ``f``), ``Dstar``, ``FivimXDstar``,
    ``AIC``, ``R2`` and ``exception``, NaN outside the mask and where the fit failed (there
    ``exception`` is 1); how far to trust them: ``S0_sd``, ``D_sd``, ``Fivim_sd`` (``f_sd``),
    ``Dstar_sd`` (None where not computed), ``ADC``, ``AICc``, ``AICc_mono``, ``model_choice``
    (map; its criterion is ``choice_criterion``), ``RMSE`` and ``bounds_hit``; any other map
    (``Fivim_ci_low``, ...) by its name.  Units: D and D* in mm²/s, S0 in those of the data.  Indexing gives
    the fit of part of the voxels (``fit[3, 4, 0]``: one voxel).

    Examples
    --------
    >>> import numpy as np
    >>> from ivim_common import IvimModel
    >>> from ivim_common.model import ivim_signal
    >>> bvals = np.array([0, 10, 20, 50, 100, 200, 400, 600, 800])
    >>> data = ivim_signal(bvals, 1000.0, 1e-3, np.linspace(0.05, 0.15, 6).reshape(2, 3, 1), 20e-3)
    >>> fit = IvimModel(bvals).fit(data, mask=data[..., 0] > 0)
    >>> fit.f.shape
    (2, 3, 1)
    >>> print(np.round(fit[1, 2, 0].f, 3))
    0.15
    >>> np.allclose(fit.predict(bvals), data)
    True
    """

    def __init__(self, model, maps, mask, seed=0, jobs=1, run_time_s=None, sidecar=None):
        self.model, self.mask, self.seed, self.jobs = model, mask, seed, jobs
        self.run_time_s, self.sidecar = run_time_s, sidecar
        self._maps = maps
        self.choice_criterion = ((sidecar or {}).get("model_choice") or {}).get("criterion", "aicc")
        self.bootstrap = ((sidecar or {}).get("uncertainty") or {}).get("bootstrap", 0)
        self.noise_sd = None      # (n_mask,) σ̂ from repeated b-values, where fit() found repeats

    def __getitem__(self, index):
        part = IvimFit(self.model, {k: v[index] for k, v in self._maps.items()}, self.mask[index],
                       self.seed, self.jobs, self.run_time_s, self.sidecar)
        part.choice_criterion, part.bootstrap = self.choice_criterion, self.bootstrap
        return part

    @property
    def shape(self):
        return self.mask.shape

    @property
    def maps(self):
        """Every map, as a dict of arrays named as the files (without ``_map.nii.gz``)."""
        return dict(self._maps)

    S0 = property(lambda self: self._maps["S0"], doc="Signal at b = 0 (units of the data).")
    D = property(lambda self: self._maps["D"], doc="Diffusion coefficient (mm²/s).")
    Fivim = property(lambda self: self._maps["Fivim"], doc="Perfusion fraction (0-1).")
    f = Fivim
    Dstar = property(lambda self: self._maps["Dstar"],
                     doc="Pseudo-diffusion coefficient (mm²/s): in excess of D, or D*p = D + D* "
                         "where the model's dstar_convention is 'osipi'.")
    FivimXDstar = property(lambda self: self._maps["FivimXDstar"], doc="f·Dstar (mm²/s).")
    AIC = property(lambda self: self._maps["AIC"], doc="n·ln(RSS/n) + 2k, as lmfit.")
    R2 = property(lambda self: self._maps["R2"], doc="Coefficient of determination on the signal.")
    exception = property(lambda self: self._maps["exception"], doc="1 where the fit failed, else 0.")
    S0_sd = property(lambda self: self._maps.get("S0_sd"), doc="SD of S0 (see uncertainty in the sidecar).")
    D_sd = property(lambda self: self._maps.get("D_sd"), doc="SD of D (mm²/s).")
    Fivim_sd = property(lambda self: self._maps.get("Fivim_sd"), doc="SD of f.")
    f_sd = Fivim_sd
    Dstar_sd = property(lambda self: self._maps.get("Dstar_sd"), doc="SD of D* (mm²/s).")
    ADC = property(lambda self: self._maps["ADC"], doc="D of the mono-exponential fit (mm²/s).")
    AICc = property(lambda self: self._maps["AICc"], doc="Small-sample AIC of the IVIM fit.")
    AICc_mono = property(lambda self: self._maps["AICc_mono"], doc="AICc of the mono-exponential fit.")
    model_choice = property(lambda self: self._maps["model_choice"],
                            doc="1 where IVIM has the lower criterion (choice_criterion), 0 where the "
                                "mono-exponential has.")
    RMSE = property(lambda self: self._maps["RMSE"], doc="Root-mean-square residual (units of the data).")
    bounds_hit = property(lambda self: self._maps["bounds_hit"],
                          doc="Bit flags of the parameters at a bound (constants.BOUND_BITS).")

    def __getattr__(self, name):
        """The other maps by name, e.g. ``fit.Fivim_sd`` where the engine gave uncertainties."""
        maps = self.__dict__.get("_maps", {})
        if name in maps:
            return maps[name]
        raise AttributeError(f"{type(self).__name__} has no map or attribute {name!r}")

    def predict(self, bvals):
        """The model's signal at ``bvals`` (s/mm²) for every voxel: shape (..., n_b)."""
        convention = dstar_convention_of(self)
        return model.ivim_signal(getattr(bvals, "bvals", bvals), self.S0, self.D, self.Fivim,
                                 model.excess_dstar(self.Dstar, self.D, convention))

    def sidecar_fields(self):
        """What the sidecar of a fit folder says of this fit (without provenance and inputs)."""
        mdl = self.model
        fitted = self.exception[self.mask] == 0
        record = model_record(mdl.approach, mdl.bounds_version, mdl.bounds, mdl.dstar_convention, mdl.bval_threshold)
        for key in ("units", "descriptions"):          # of the maps written
            record["model"][key] = {k: v for k, v in record["model"][key].items() if k in self._maps}
        return {
            "voxel_selection": "the mask given to IvimModel.fit",
            "bvals": mdl.bvals,
            **record,
            "engine": mdl.engine,
            "engine_options": mdl.engine_record,
            "seed": self.seed,
            "jobs": self.jobs,
            "maps": {name: MAP_FILES[name] for name in self._maps},
            "counts": {"mask_voxels": fitted.size, "fitted": int(fitted.sum()),
                       "failed": int((~fitted).sum())},
            "summary": median_iqr({k: v[self.mask] for k, v in self._maps.items() if k != "exception"},
                                     fitted),
            **self.trust_fields(fitted),
            "run_time_s": None if self.run_time_s is None else round(self.run_time_s, 3),
        }

    def trust_fields(self, fitted):
        """The sidecar's record of the uncertainty, model choice and bounds, and their summary
        over the ``fitted`` voxels of the mask."""
        maps = {k: v[self.mask][fitted] for k, v in self._maps.items()}
        engine = self.model.engine if self.model else None
        method = ("bootstrap" if self.bootstrap else "posterior" if engine == "bayes" else "fisher")
        choice = maps.get("model_choice", np.empty(0))
        choice = choice[np.isfinite(choice)]
        flags = maps.get("bounds_hit", np.empty(0))
        flags = flags[np.isfinite(flags)].astype(np.int64)
        ratio = None
        if self.noise_sd is not None and "RMSE" in maps:
            with np.errstate(divide="ignore", invalid="ignore"):
                r = maps["RMSE"] / self.noise_sd[fitted]
            r = r[np.isfinite(r)]
            ratio = float(np.median(r)) if r.size else None
        return {
            "uncertainty": {"method": method, "bootstrap": int(self.bootstrap),
                            "definition": trust.UNCERTAINTY_METHODS[method]},
            "model_choice": {"criterion": self.choice_criterion,
                             "definition": ("model_choice = 1 where the IVIM fit has the lower "
                                            f"{self.choice_criterion.upper()}, 0 where the mono-exponential "
                                            "S0*exp(-b*ADC) has (k = 2 against the IVIM fit's free "
                                            "parameters); AICc_map and AICc_mono_map are written either way")},
            "bounds_hit_bits": {str(bit): f"{name} at its {side} bound" for bit, name, side in BOUND_BITS},
            "trust_summary": {
                "share_model_choice_ivim": float(choice.mean()) if choice.size else None,
                "share_at_bound": {f"{name} {side}": float((flags & bit > 0).mean()) if flags.size else None
                                   for bit, name, side in BOUND_BITS},
                "median_rmse_over_sigma": ratio,
                "sigma": ("per voxel, from the scatter of its repeated b-values" if self.noise_sd is not None
                          else "unknown (no repeated b-value): no RMSE/sigma"),
            },
        }

    def to_folder(self, folder, affine=None, force=False, sidecar=None):
        """Write the maps and their sidecar as ``ivim_fitting.py`` does.

        Parameters
        ----------
        folder : str
            Output folder; an existing one only with ``force`` (then only the toolbox's files
            in it are replaced).  Written complete or not at all.
        affine : ndarray (4, 4) or nibabel image, optional
            Voxel-to-world matrix of the maps, or the image whose affine, qform/sform codes and
            spatial unit they take (the DWI).  Default: the identity.
        force : bool
        sidecar : dict, optional
            Fields added to the sidecar (e.g. provenance and inputs).

        Returns
        -------
        dict
            The sidecar written.
        """
        doc = {**provenance("ivim_common.IvimFit.to_folder", None), **self.sidecar_fields(), **(sidecar or {})}
        write_fit_folder(folder, self._volumes(), np.eye(4) if affine is None else affine, doc, force)
        return doc

    def to_bids(self, root, paths, affine=None, sidecar=None):
        """Write the maps as BIDS derivatives (BEP016 names ``paths`` from
        :func:`ivim_common.io.bids_paths`, one JSON sidecar each) under ``root``, with its
        ``dataset_description.json`` if it has none; see :meth:`to_folder` for ``affine`` and
        ``sidecar``.  Returns the toolbox's sidecar of the fit as written beside them
        (:func:`ivim_common.io.bids_fit_sidecar`)."""
        doc = {**provenance("ivim_common.IvimFit.to_bids", None), **self.sidecar_fields(), **(sidecar or {})}
        return write_bids_maps(root, paths, self._volumes(), np.eye(4) if affine is None else affine, doc)

    def _volumes(self):
        """The maps as 3-D volumes for NIfTI files, 0 outside the mask."""
        if len(self.shape) > 3:
            raise ValueError(f"maps of {len(self.shape)} dimensions, NIfTI maps hold 3")
        grid = self.shape + (1,) * (3 - len(self.shape))
        return {name: np.where(self.mask, v, 0.0).reshape(grid) for name, v in self._maps.items()}

    @classmethod
    def from_folder(cls, folder):
        """Read a folder written by ``ivim_fitting.py`` or :meth:`to_folder`.

        The voxels outside the mask (0 in every map) become NaN; with a sidecar, ``model`` is
        the :class:`IvimModel` it describes, else None (e.g. the original toolbox's maps).
        """
        volumes, sidecar = read_fit_folder(folder)
        mask = np.any([v != 0 for v in volumes.values()], axis=0)    # 0 in every map: outside (NaN != 0)
        maps = {name: np.full(mask.shape, np.nan) for name in CORE_MAPS}      # absent: NaN
        maps.update({name: np.where(mask, v, np.nan) for name, v in volumes.items()})
        mdl = None
        if sidecar and sidecar.get("bvals") and sidecar.get("approach"):
            mdl = IvimModel(sidecar["bvals"], sidecar["approach"], sidecar.get("bounds_version") or "2020",
                            sidecar.get("engine", "fast"), sidecar.get("bounds_overrides"),
                            sidecar.get("dstar_convention", "toolbox"), sidecar.get("bval_threshold"))
            mdl.engine_record = sidecar.get("engine_options") or {}
        return cls(mdl, maps, mask, seed=(sidecar or {}).get("seed", 0), jobs=(sidecar or {}).get("jobs", 1),
                   run_time_s=(sidecar or {}).get("run_time_s"), sidecar=sidecar)
