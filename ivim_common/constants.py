"""The toolbox's tables and names, in plain Python, so that ``--help`` needs no numpy.

``--help`` must stay instant (numpy alone takes about 0.2 s to import), so what a parser, a
sidecar, the viewer and the figures say about the model, its maps and the simulations lives here
once; :mod:`ivim_common.model`, :mod:`ivim_common.simulation` and the rest read it from here.
"""
from dataclasses import dataclass, replace

# The model (see ivim_common.model).
EQUATION = "S(b) = S0 * exp(-b*D) * (Fivim*exp(-b*Dstar) + 1 - Fivim)"
CONVERSION = (
    "The perfusing pool decays with D + Dstar. In the dipy/OSIPI form "
    "S(b) = S0*(f*exp(-b*Dp) + (1-f)*exp(-b*D)), Dp = D + Dstar (f, D and S0 unchanged)."
)
APPROACHES = ("one-step", "two-step", "segmented")
BOUNDS_VERSIONS = ("2020", "2019", "osipi")
DIRECTION_MODES = ("all", "trace", "each")    # ivim_fitting.py --directions
# How a written Dstar map is defined: 'toolbox' D* in excess of D (the model's), 'osipi' the
# perfusing pool's own pseudo-diffusion coefficient D*p = D + D* (dipy, osipy, OSIPI).
DSTAR_CONVENTIONS = ("toolbox", "osipi")
# Names --bounds takes (Fivim also as f); S0 as a factor of the preset's reference signal.
BOUND_NAMES = ("S0", "D", "f", "Fivim", "Dstar")


@dataclass(frozen=True)
class Parameter:
    """One output map: what it is and how it is shown.

    Attributes
    ----------
    label : str
        Short name for plots and panels (e.g. 'f', 'D*').
    unit : str
        Unit for sidecars ('' for a pure number).
    axis : str
        Colour-bar and axis label.
    display : tuple of float or None
        Default colour range of the viewer (None: 1st-99th percentile of the map).
    description : str
        One line for the sidecar.
    fmt : str
        Format of a value in the viewer's panel.
    cmap : str
        Default colour map.
    """
    label: str
    unit: str
    axis: str
    display: tuple
    description: str
    fmt: str = ".4g"
    cmap: str = "viridis"

    @property
    def short_unit(self):
        """The unit as the viewer's panel shows it beside a value ('' for signal units)."""
        return self.unit.replace("^2", "²") if self.unit.startswith("mm") else ""


# Every map ivim_fitting.py writes, in the order of the files and the viewer's panel.  A new
# map is one entry here and the lines that compute it (ivim_common.api.fit_voxels).
PARAMETERS = {
    "S0": Parameter("S0", "signal units (as the DWI)", "S0 (DWI units)", None,
                    "signal at b = 0 of the fitted model", ".4g", "gray"),
    "D": Parameter("D", "mm^2/s", "D (mm²/s)", (0.0, 3e-3), "diffusion coefficient", ".3e"),
    "Fivim": Parameter("f", "fraction (0-1)", "f (fraction)", (0.0, 0.35), "perfusion fraction", ".3f"),
    "Dstar": Parameter("D*", "mm^2/s", "D* (mm²/s)", (0.0, 0.0525),
                       "pseudo-diffusion coefficient in excess of D (the perfusing pool decays with D + D*)",
                       ".3e"),
    "FivimXDstar": Parameter("f·D*", "mm^2/s", "f·D* (mm²/s)", (0.0, 0.01),
                             "product of f and D* (related to blood flow)", ".3e"),
    "AIC": Parameter("AIC", "dimensionless", "AIC", None,
                     "Akaike information criterion n*ln(RSS/n) + 2k, k the free parameters (as lmfit)", ".4g"),
    "R2": Parameter("R²", "dimensionless", "R² (on the signal)", (0.0, 1.0),
                    "coefficient of determination on the signal", ".3f"),
    "exception": Parameter("exception", "1 = fit failed, 0 = fitted", "exception (1 = failed)", (0.0, 1.0),
                           "1 where the fit failed (NaN or non-positive signal, or no finite result)", ".0f"),
}
# How far to trust each voxel (ivim_common.api.trust_maps): the mono-exponential rival, the
# model choice between the two, and the quality of the fit.
PARAMETERS.update({
    "ADC": Parameter("ADC", "mm^2/s", "ADC (mm²/s)", (0.0, 3e-3),
                     "D of the mono-exponential least-squares fit S0*exp(-b*ADC) of the same signal", ".3e"),
    "AICc": Parameter("AICc", "dimensionless", "AICc (IVIM)", None,
                      "small-sample AIC of the IVIM fit, n*ln(RSS/n) + 2k + 2k(k+1)/(n-k-1), k its free "
                      "parameters (NaN when n <= k + 1)", ".4g"),
    "AICc_mono": Parameter("AICc mono", "dimensionless", "AICc (mono)", None,
                           "AICc of the mono-exponential fit (k = 2)", ".4g"),
    "model_choice": Parameter("model", "1 = IVIM, 0 = mono-exponential", "1 = IVIM", (0.0, 1.0),
                              "1 where IVIM has the lower criterion (model_choice in the sidecar: AICc by "
                              "default, or BIC), 0 where the mono-exponential has; NaN where failed",
                              ".0f", "coolwarm"),
    "RMSE": Parameter("RMSE", "signal units (as the DWI)", "RMSE (DWI units)", None,
                      "root-mean-square residual sqrt(RSS/n) of the IVIM fit", ".4g", "magma"),
    "bounds_hit": Parameter("bounds hit", "bit flags", "bounds hit (bit flags)", (0.0, 255.0),
                            "sum of the flags of the free parameters that ended within 0.1 % of the width "
                            "of their nominal box of a bound (or beyond it): 1 S0 low, 2 S0 high, 4 D low, "
                            "8 D high, 16 f low, 32 f high, 64 D* low, 128 D* high; 0 none", ".0f",
                            "nipy_spectral"),
})
PARAMETERS["exception"] = PARAMETERS.pop("exception")    # the fit's status stays the last core map


# With --dstar-convention osipi, the Dstar and FivimXDstar maps hold D*p = D + D* and f·D*p.
OSIPI_DSTAR = {
    "Dstar": dict(label="D*p", axis="D*p = D + D* (mm²/s)", display=None,
                  description="pseudo-diffusion coefficient of the perfusing pool, D*p = D + D* (OSIPI/dipy "
                              "convention: S = S0*(f*exp(-b*D*p) + (1-f)*exp(-b*D)))"),
    "FivimXDstar": dict(label="f·D*p", axis="f·D*p (mm²/s)", display=None,
                        description="product of f and D*p = D + D* (OSIPI/dipy convention)"),
}


def parameters(dstar_convention="toolbox"):
    """The parameter table as the maps of ``dstar_convention`` hold them (labels, descriptions)."""
    if dstar_convention != "osipi":
        return PARAMETERS
    table = {name: replace(p, **OSIPI_DSTAR.get(name, {})) for name, p in PARAMETERS.items()}
    for kind, (short, long) in UNCERTAINTY.items():      # the uncertainty of D*p, then
        table[f"Dstar_{kind}"] = replace(table[f"Dstar_{kind}"], label=f"{short} D*p", axis=f"{short} D*p (mm²/s)",
                                         description=f"{long} D*p = D + D*")
    return table


MODEL_PARAMETERS = ("S0", "D", "Fivim", "Dstar")      # the model's, in the order fitters use
# The bits of bounds_hit: (bit, parameter, 'lower' or 'upper'), parameter j's lower bound 2^(2j).
BOUND_BITS = tuple((1 << (2 * j + side), name, ("lower", "upper")[side])
                   for j, name in enumerate(MODEL_PARAMETERS) for side in (0, 1))
MODEL_CHOICE_CRITERIA = ("aicc", "bic")
CORE_MAPS = tuple(PARAMETERS)                         # written by every fit
# The uncertainty of each model parameter, where the engine gives it: its standard deviation
# and the ends of its 95 % interval, in the parameter's unit.
UNCERTAINTY = {"sd": ("SD of", "standard deviation of"),
               "ci_low": ("2.5 % of", "lower end (2.5 %) of the 95 % interval of"),
               "ci_high": ("97.5 % of", "upper end (97.5 %) of the 95 % interval of")}
for _name in MODEL_PARAMETERS:
    for _kind, (_short, _long) in UNCERTAINTY.items():
        _p = PARAMETERS[_name]
        PARAMETERS[f"{_name}_{_kind}"] = Parameter(f"{_short} {_p.label}", _p.unit, f"{_short} {_p.axis}", _p.display,
                                                   f"{_long} {_p.label}", _p.fmt, _p.cmap)

# What ivim_fitting.py writes and ivim_view_fits.py reads.
MAP_FILES = {name: f"{name}_map.nii.gz" for name in PARAMETERS}
FIT_SIDECAR = "ivim_fitting.json"


# The simulations (see ivim_common.simulation).
S0_TRUE = 600.0             # the true signal at b = 0; SNR = S0_TRUE / sigma
NOISE_MODELS = ("gaussian", "rician")
CONDITIONS = ("FDstar", "all")
REQUIRED_SNR_METHODS = ("montecarlo", "crlb")
DEFAULT_N_DRAWS = 1000
DEFAULT_MAX_ERROR = 10.0    # % (mean |error|)
DEFAULT_SNR_START = 1500.0
SNR_CAP = 1e5               # a cell still failing at this SNR is "not reachable"
# The estimates the simulations score, as named in their result files, and the map each is.
ERROR_PARAMETERS = {"f": "Fivim", "Dstar": "Dstar", "D": "D", "fDstar": "FivimXDstar"}


@dataclass(frozen=True)
class SimulationKind:
    """One kind of simulation result: how it is computed, stored and drawn.

    Attributes
    ----------
    snr : {None, 'fixed', 'start'}
        None: no noise; 'fixed': one SNR (-snr, required); 'start': the SNR where the search starts.
    default_D : str
        Default true D values of the script (-D).
    figures : tuple of str
        Figures ivim_simu_plot.py draws, one of each per true D.
    title : str
        What the result holds, for the figures.
    """
    snr: str
    default_D: str
    figures: tuple
    title: str


# Arrays with one value per grid cell in their last 3 axes: the ones the shards of a run fill in.
SIMULATION_CELL_ARRAYS = ("mean_abs_err", "sd_abs_err", "mean_signed_err", "pct_signed_err", "n_failed",
                          "min_snr", "mean_err_at_min_snr", "mean_pred_sd", "emp_sd", "coverage_95", "n_with_sd")
SIMULATION_KINDS = {
    "error_nonoise": SimulationKind(None, "0.2e-3,0.3e-3,0.7e-3,1.0e-3,1.2e-3,1.5e-3,1.8e-3,2.0e-3,2.5e-3,2.9e-3",
                                    ("sim", "true"), "Error without noise"),
    "error_noise": SimulationKind("fixed", "0.3e-3,1.5e-3", ("sim", "sim_STD", "true", "sd", "coverage"),
                                  "Error with noise"),
    "required_snr": SimulationKind("start", "0.3e-3,1.5e-3", ("minSNR", "params"), "Required SNR"),
}
