"""The fitting engines, one module each, found through :data:`ENGINES`.

Every engine module has the same three names:

``CHUNK_SIZE``
    Voxels per chunk of work by default (a chunk should take about a second or more).
``prepare(announce=True, helper=None)``
    Make the engine ready in this process (compile or load compiled code), once; worker
    processes started afterwards find it ready to load.  Called through
    :func:`ivim_common.compiled.prepare`, with the ``helper`` process it started, if any.
``fit(bvals, signal, init, lo, hi, vary, seeds, limits=None, **options)``
    Fit the model to finite signal (n_voxels, n_b; positive, except with the 'osipi' preset,
    see :func:`ivim_common.model.valid_voxels`) with per-voxel start values and
    nominal bounds ``init, lo, hi`` (n_voxels, 4, in the order of
    :data:`ivim_common.model.PARAM_NAMES`), ``vary`` (4,) the free parameters and ``seeds``
    (n_voxels, 2) per-voxel seeds (see :func:`ivim_common.api.voxel_seeds`; None unless the
    module sets ``RANDOM = True``: they take some µs a voxel to derive); ``limits`` (None or a
    dict, see :func:`ivim_common.model.refinement_limits`) keeps the results of the 'osipi'
    preset and of the user's bounds inside them.  Returns a dict with ``params`` (n_voxels, 4),
    NaN rows where the fit failed, and optionally the uncertainty ``sd``, ``ci_low``,
    ``ci_high`` (n_voxels, 4), that of D*p = D + D* as ``pool`` (n_voxels, 3: SD, 2.5 %, 97.5 %),
    and the box the fit lived in as ``lo``, ``hi`` (n_voxels, 4; default the nominal bounds),
    against which the bound flags are set.

and may have

``IN_PROCESS_VOXELS``
    Voxel fits (bootstrap refits included) up to which a job runs in the calling process,
    whatever the jobs asked: starting worker processes (each imports the package and loads the
    compiled code) would cost more than the work.  Default 0.
``compiles_here()``, ``HELPER_TASKS``
    For compiled code: whether this process would compile the engine (numba's cache lacks
    it) and can cache it; and the names of functions of the module, each taking no argument
    and working in a fresh process, that a helper process runs on the first run to compile
    part of the kernels into the cache (:func:`ivim_common.compiled.prepare`, which asks the
    first module it prepares).  ``prepare`` then compiles the rest, waits for each task with
    ``helper.wait`` (a helper still running when ``prepare`` returns is stopped) and loads
    the task's kernels from the cache.
``image_options(model, signal, jobs, volume, **user_options)``
    Called once per fit with every voxel's signal, before the chunks (``volume``: the
    volume's shape and the voxels' flat indices in it, or None): returns the ``options``
    passed to every chunk's ``fit`` (e.g. a prior estimated from the image) and a JSON-ready
    record of them for the sidecar.  Options with ``neighbours`` are fitted as one chunk.

A new engine is one module here and one entry in :data:`ENGINES`; the scripts' ``--engine``
choices and help come from this table.  Only the standard library is imported here, so
``--help`` stays instant.
"""
import importlib

# name: (module, one line for --help)
ENGINES = {
    "fast": ("fast", "compiled grid + Newton solver of the toolbox's least squares (default; "
                     "the first run of an installation compiles it, some 3-6 s)"),
    "lmfit": ("lmfit_reference", "the original's lmfit differential evolution, the reference "
                                 "(about 1-2 s of CPU per voxel)"),
    "bayes": ("bayes", "posterior on a grid, S0 and the noise integrated out (a few times the "
                       "time of fast; see --prior)"),
}


# Options an engine takes through image_options: {engine: {option: (choices, default, help)}};
# the scripts make a --option flag of each.
OPTIONS = {
    "bayes": {"prior": (("auto", "uniform", "log", "empirical", "spatial"), "auto",
                        "prior of --engine bayes (docs/accuracy_priors.md): uniform = uniform in D, f and "
                        "D*p = D+D* within the bounds (D within the toolbox's Dinit range, 0.15e-3 to 4.5e-3 "
                        "mm^2/s), posterior mean; log = uniform in D and log D*p, f's density falling as 1-f, "
                        "posterior median; auto = uniform in the 2020/2019 presets, log with the osipi preset "
                        "or --bounds (wide boxes); "
                        "empirical = from a first least-squares pass over the voxels; spatial = auto's times "
                        "a prior tying each voxel to its tissue and its neighbours (a volume fit, one "
                        "process) (default: %(default)s)")},
}


# Approaches an engine cannot run, and why.
UNSUPPORTED = {
    "bayes": {"segmented": "the Bayesian engine integrates S0 out, and segmented holds S0 at the signal at "
                           "the lowest b"},
}


def check_approach(name, approach):
    """ValueError (one line) if the engine cannot run the approach."""
    why = UNSUPPORTED.get(name, {}).get(approach)
    if why:
        raise ValueError(f"--engine {name} cannot fit -mo {approach}: {why}")


def get(name):
    """The engine module called ``name``."""
    if name not in ENGINES:
        raise ValueError(f"unknown engine {name!r} (choose from {', '.join(ENGINES)})")
    return importlib.import_module(f"{__name__}.{ENGINES[name][0]}")


def add_option_arguments(parser):
    """A ``--<option>`` flag for each engine option of :data:`OPTIONS` (default None: unset)."""
    for engine, options in OPTIONS.items():
        for option, (choices, default, text) in options.items():
            parser.add_argument(f"--{option.replace('_', '-')}", choices=choices, default=None,
                                help=text.replace("%(default)s", default))


def options_of(parser, args):
    """The engine options set on the command line, as IvimModel's keywords; a usage error if
    one is set for an engine that does not take it."""
    given = {option: getattr(args, option) for options in OPTIONS.values() for option in options
             if getattr(args, option, None) is not None}
    unknown = [option for option in given if option not in OPTIONS.get(args.engine, {})]
    if unknown:
        parser.error(f"--{unknown[0].replace('_', '-')} applies to --engine "
                     + " or ".join(e for e, o in OPTIONS.items() if unknown[0] in o))
    try:
        check_approach(args.engine, args.model)
    except ValueError as err:
        parser.error(str(err))
    return given


def help_text():
    """'name: what it is; ...' of every engine, for --help."""
    return "; ".join(f"{name}: {text}" for name, (_, text) in ENGINES.items())
