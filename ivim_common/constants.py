"""Names and texts of the toolbox that the scripts' ``--help`` shows, without importing numpy.

``--help`` must stay instant, and numpy alone takes about 0.2 s to import, so the choices and
texts a parser needs live here, in plain Python; :mod:`ivim_common.model`,
:mod:`ivim_common.fit` and :mod:`ivim_common.simulation` take them from here.
"""

# The model (see ivim_common.model).
EQUATION = "S(b) = S0 * exp(-b*D) * (Fivim*exp(-b*Dstar) + 1 - Fivim)"
CONVERSION = (
    "The perfusing pool decays with D + Dstar. In the dipy/OSIPI form "
    "S(b) = S0*(f*exp(-b*Dp) + (1-f)*exp(-b*D)), Dp = D + Dstar (f, D and S0 unchanged)."
)
APPROACHES = ("one-step", "two-step")
BOUNDS_VERSIONS = ("2020", "2019")

# The fitters (see ivim_common.fit).
ENGINES = ("fast", "lmfit")
OUTPUT_NAMES = ("S0", "D", "Fivim", "Dstar", "FivimXDstar", "AIC", "R2", "exception")

# What ivim_fitting.py writes and ivim_view_fits.py reads.
MAP_FILES = {name: f"{name}_map.nii.gz" for name in OUTPUT_NAMES}
FIT_SIDECAR = "ivim_fitting.json"

# The simulations (see ivim_common.simulation).
S0_TRUE = 600.0             # the true signal at b = 0; SNR = S0_TRUE / sigma
NOISE_MODELS = ("gaussian", "rician")
CONDITIONS = ("FDstar", "all")
DEFAULT_N_DRAWS = 1000
DEFAULT_MAX_ERROR = 10.0    # % (mean |error|)
DEFAULT_SNR_START = 1500.0
