"""What every command-line script shares: the parser, the common flags and the exit codes.

Exit codes: 0 success, 1 user error (:class:`ivim_common.errors.IvimError`, one line on
stderr), 2 usage error (one line on stderr), 128 + the signal's number when stopped by a signal:
130 Ctrl-C (SIGINT), 129 SIGHUP, 143 SIGTERM (what SLURM and ``timeout`` send at a time limit).
Tracebacks are shown only with ``-v 2``.  Only the standard library is imported here, so
``--help`` stays instant.
"""
import argparse
import contextlib
import math
import signal
import sys
import traceback

from .errors import InputError, IvimError, UsageError
from .version import __version__


class ArgumentParser(argparse.ArgumentParser):
    """argparse with the description and epilog kept as written and one-line usage errors."""

    def __init__(self, **kwargs):
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(**kwargs)

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _int_at_least(text, minimum):
    value = int(text)
    if value < minimum:
        raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
    return value


def positive_int(text):
    """argparse type: an integer >= 1."""
    return _int_at_least(text, 1)


def non_negative_int(text):
    """argparse type: an integer >= 0 (e.g. a seed)."""
    return _int_at_least(text, 0)


def non_negative_float(text):
    """argparse type: a finite number >= 0."""
    value = float(text)
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value


def positive_float(text):
    """argparse type: a finite number > 0."""
    value = float(text)
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value


def value_list(text, positive=True):
    """argparse type: ``start:NUM:stop`` (NUM values, as numpy.linspace) or a comma list of
    finite numbers (> 0 when ``positive``), as a float array.  numpy is imported here, when the
    arguments are converted, not when ``--help`` is asked for."""
    import numpy as np

    text = str(text).strip()
    try:
        if ":" in text:
            start, num, stop = text.split(":")
            values = np.linspace(float(start), float(stop), int(num))
        else:
            values = np.array([float(v) for v in text.split(",") if v.strip()])
    except ValueError:
        raise argparse.ArgumentTypeError(f"cannot read {text!r}; expected start:NUM:stop (NUM values) "
                                         "or a comma-separated list") from None
    if values.size == 0 or not np.all(np.isfinite(values)):
        raise argparse.ArgumentTypeError(f"{text!r} gives no finite values")
    if positive and np.any(values <= 0):
        raise argparse.ArgumentTypeError(f"every value must be > 0 (got {text!r})")
    return values


def fraction_list(text):
    """argparse type: :func:`value_list` of fractions in (0, 1]."""
    values = value_list(text)
    if values.max() > 1:
        raise argparse.ArgumentTypeError(f"a fraction, every value must be <= 1 (got {text!r})")
    return values


def bval_list(text):
    """argparse type: b-values (s/mm²) as a comma list, at least 4 distinct, all >= 0."""
    import numpy as np

    bvals = value_list(text, positive=False)
    if np.any(bvals < 0) or np.unique(bvals).size < 4:
        raise argparse.ArgumentTypeError(f"need at least 4 distinct b-values >= 0 (got {text!r})")
    return bvals


def bounds_spec(text):
    """argparse type: ``name=lower:upper[:start],...`` (names S0, D, f, Dstar) -> ``{name:
    (lower, upper, start or None)}``; an unknown name, lower > upper, a start outside its
    bounds or a name given twice is a usage error."""
    from .constants import BOUND_NAMES

    out = {}
    for item in (t.strip() for t in str(text).split(",") if t.strip()):
        name, _, values = item.partition("=")
        name = name.strip()
        if name not in BOUND_NAMES:
            raise argparse.ArgumentTypeError(f"unknown parameter {name!r} in {item!r} (choose from S0, D, f, Dstar)")
        key = "Fivim" if name == "f" else name
        if key in out:
            raise argparse.ArgumentTypeError(f"{name} given twice")
        try:
            numbers = [float(v) for v in values.split(":")]
        except ValueError:
            numbers = []
        if len(numbers) not in (2, 3) or not all(math.isfinite(v) for v in numbers):
            raise argparse.ArgumentTypeError(f"cannot read {item!r}; expected {name}=lower:upper or "
                                             f"{name}=lower:upper:start (finite numbers)")
        low, high, start = (numbers + [None])[:3]
        if not 0 <= low <= high:
            raise argparse.ArgumentTypeError(f"{name}: need 0 <= lower <= upper (got {low:g}:{high:g})")
        if start is not None and not low <= start <= high:
            raise argparse.ArgumentTypeError(f"{name}: start {start:g} outside its bounds [{low:g}, {high:g}]")
        if key == "Fivim" and high > 1:
            raise argparse.ArgumentTypeError(f"f is a fraction: its upper bound must be <= 1 (got {high:g})")
        out[key] = (low, high, start)
    if not out:
        raise argparse.ArgumentTypeError(f"no bounds in {text!r}")
    return out


def b_tolerance(text):
    """argparse type: a b-value tolerance in s/mm² (a number >= 0) or a percentage ('2%')."""
    text = str(text).strip()
    try:
        value = float(text[:-1]) if text.endswith("%") else float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected s/mm^2 (e.g. 10) or a percentage (e.g. 2%), got {text!r}") from None
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text!r}")
    return text if text.endswith("%") else value


def shard_spec(text):
    """argparse type: ``K/N`` with 1 <= K <= N -> (K, N)."""
    try:
        k, n = (int(v) for v in str(text).split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected K/N, e.g. 2/8 (got {text!r})") from None
    if not 1 <= k <= n:
        raise argparse.ArgumentTypeError(f"need 1 <= K <= N (got {text!r})")
    return k, n


def add_engine_argument(parser):
    """``--engine`` and the engines' options, their choices and help from the engine registry."""
    from .engines import ENGINES, add_option_arguments, help_text

    parser.add_argument("--engine", choices=tuple(ENGINES), default="fast", help=help_text())
    add_option_arguments(parser)


# The flags the scripts share, each declared once below.  The first spellings are the original
# toolbox's where it had the flag (-mo in ivim_fitting.py, -model and -ofolder in the simulation
# scripts): each script passes its own; the long form is the same in every script.
APPROACH_HELP = ("fitting approach: one-step, S0, D, f, D* free; two-step, D fixed at the log-linear "
                 "estimate on the high b-values (Dinit); segmented, D from the line on b >= --b-threshold, "
                 "f from its intercept and the signal at the lowest b, then D* alone")


def add_model_arguments(parser, *spellings, required=False, approaches=None, b_threshold=True,
                        dstar_convention=True):
    """The model's flags: the approach (``spellings``, e.g. '-mo', then --approach; stored as
    ``args.model``, default one-step unless ``required``; ``approaches`` limits the choices),
    --bounds-version and, unless turned off, --b-threshold and --dstar-convention."""
    from . import constants

    parser.add_argument(*spellings, "--approach", dest="model", required=required,
                        default=None if required else "one-step",
                        choices=approaches or constants.APPROACHES,
                        help=APPROACH_HELP + ("" if required else " (default: %(default)s)"))
    parser.add_argument("--bounds-version", choices=constants.BOUNDS_VERSIONS,
                        help="one-step bounds: 2020 (default; the original's code since Dec 2020: b >= 400 for "
                             "Dinit, f in [0, 0.20], D* in [2*Dinit, 50e-3]), 2019 (the code behind the published "
                             "maps; b >= 500, f in [0, 0.35], D* in [0.8*Dinit, 35.5e-3]) or osipi (the OSIPI code "
                             "collection's: S0 in [0.7, 1.3]*S(lowest b), f in [0, 1], D in [0, 5e-3], "
                             "D*p = D + D* in [5e-3, 0.2]; every result inside them); one-step only")
    if b_threshold:
        parser.add_argument("--b-threshold", type=non_negative_float, metavar="B",
                            help="b (s/mm^2) from which the initialisation's line of ln S is fitted (default: "
                                 "400 one-step 2020, 500 one-step 2019 and two-step, 200 segmented and osipi)")
    if dstar_convention:
        parser.add_argument("--dstar-convention", choices=constants.DSTAR_CONVENTIONS, default="toolbox",
                            help="what D* means in the maps, the flags (--bounds, -Dstar) and the errors: toolbox, "
                                 "D* in excess of D (default); osipi, the perfusing pool's own D*p = D + D* "
                                 "(dipy, osipy, OSIPI)")


def check_bounds_version(parser, args, spelling):
    """A usage error for --bounds-version with an approach other than one-step (``spelling``:
    the script's flag of the approach, for the message)."""
    if args.model != "one-step" and args.bounds_version is not None:
        parser.error(f"--bounds-version applies to {spelling} one-step only ({args.model} has one set of bounds)")


def add_output_argument(parser, *spellings, required=False, default=None):
    """The output folder: ``spellings`` (e.g. '-o'), then --ofolder; stored as ``args.ofolder``."""
    parser.add_argument(*spellings, "--ofolder", required=required, default=default, metavar="FOLDER",
                        help="output folder, created if needed" + (" (default: %(default)s)" if default else ""))


def add_run_arguments(parser, force=True):
    """--seed, -j/--jobs and (unless turned off) --force."""
    parser.add_argument("--seed", type=non_negative_int, default=0,
                        help="seed of every random draw (noise, search starts, the lmfit engine; each voxel's "
                             "from it and the voxel's index); recorded in the outputs (default: %(default)s)")
    parser.add_argument("-j", "--jobs", type=positive_int, metavar="N",
                        help="worker processes (default: the CPUs this process may use, i.e. its CPU affinity and "
                             "cgroup quota, as SLURM sets them); recorded in the outputs, the results do not depend "
                             "on it")
    if force:
        add_force_argument(parser)


def add_force_argument(parser):
    """--force."""
    parser.add_argument("--force", action="store_true",
                        help="replace outputs that exist: only the files the toolbox writes (in a fit folder, the "
                             "maps of the replaced run that this run does not write are removed too; nothing else "
                             "is touched)")


def add_fitting_arguments(parser, *spellings):
    """The flags of a fit itself, as ivim_fitting.py and ivim_bids.py take them: --directions,
    --b-tolerance, the model's flags (``spellings`` of the approach, e.g. '-mo', '--model'),
    --bounds, the engine and its options, -mt, --chunk-size, --model-choice, --bootstrap, --seed
    and -j/--jobs.  :func:`check_fitting_arguments` completes them after parsing."""
    from . import constants

    parser.add_argument("--directions", choices=constants.DIRECTION_MODES, default="all",
                        help="all: fit every volume together (default); trace: fit the geometric mean over "
                             "directions at each b-value (the trace-weighted signal); each: one set of maps "
                             "per direction (in FOLDER/dir1, dir2, ...)")
    parser.add_argument("--b-tolerance", type=b_tolerance, metavar="TOL",
                        help="b-values within TOL of each other are one b-value, those within TOL of 0 are "
                             "b = 0 (s/mm^2, or a percentage such as 2%%; default: 2%% of b, at least 1 s/mm^2); "
                             "used by --directions trace/each")
    add_model_arguments(parser, *spellings)
    parser.add_argument("--bounds", type=bounds_spec, metavar="SPEC",
                        help="override bounds of the preset: name=lower:upper[:start],... with names S0 (a "
                             "factor of the preset's reference signal), D, f, Dstar (in --dstar-convention), "
                             "e.g. \"f=0:0.6,Dstar=0.005:0.3,D=0.1e-3:3e-3\"; every result lies inside them")
    add_engine_argument(parser)
    parser.add_argument("-mt", type=int, choices=(0, 1), default=1,
                        help="original flag: 0 = a single process (as -j 1), 1 = use --jobs (default)")
    parser.add_argument("--chunk-size", type=positive_int, metavar="N",
                        help="voxels per chunk of work (default: 5000 fast, 20 lmfit); results do not "
                             "depend on it")
    parser.add_argument("--model-choice", choices=constants.MODEL_CHOICE_CRITERIA, default="aicc",
                        help="criterion of model_choice_map, IVIM against the mono-exponential fit: aicc "
                             "(default) or bic; recorded in the sidecar")
    parser.add_argument("--bootstrap", type=non_negative_int, default=0, metavar="N",
                        help="residual bootstrap with N refits per voxel (0: off, the default): the *_sd maps "
                             "then come from it, with *_ci_low/*_ci_high maps (2.5/97.5 %%); seeded per voxel "
                             "from --seed; with the fast engine about 2-3 ms of CPU per voxel for N = 200")
    add_run_arguments(parser, force=False)


def check_fitting_arguments(parser, args, spelling):
    """Usage errors of :func:`add_fitting_arguments`' flags that need more than argparse
    (--bounds-version with another approach than one-step, --bounds against the approach and
    convention, the engine's options, --bootstrap with --prior spatial); sets
    ``args.engine_options``, ``args.model_options`` (the keywords of IvimModel after its
    b-values) and ``args.fit_options`` (those of its fit)."""
    from . import engines, model, spatial

    check_bounds_version(parser, args, spelling)
    args.engine_options = engines.options_of(parser, args)
    if args.bootstrap and args.engine_options.get("prior") == "spatial":
        parser.error(spatial.NO_BOOTSTRAP)
    try:
        model.check_user_bounds(args.bounds, args.model, args.dstar_convention)
    except ValueError as err:
        parser.error(f"argument --bounds: {str(err).removeprefix('bounds: ')}")
    args.model_options = dict(approach=args.model, bounds_version=args.bounds_version or "2020", engine=args.engine,
                              bounds=args.bounds, dstar_convention=args.dstar_convention,
                              bval_threshold=args.b_threshold, **args.engine_options)
    args.fit_options = dict(seed=args.seed, chunk_size=args.chunk_size, model_choice=args.model_choice,
                            bootstrap=args.bootstrap)


def fitting_model(args, bvals, bval_path):
    """The IvimModel of :func:`check_fitting_arguments`' options for ``bvals``; b-values that
    cannot give what the approach needs are an InputError naming ``bval_path``."""
    from .api import IvimModel

    try:
        return IvimModel(bvals, **args.model_options)
    except ValueError as err:
        raise InputError(f"b-values {bval_path}: {err}") from None


def fitting_jobs(args):
    """Worker processes of a fit: 1 with -mt 0, else -j, else the CPUs this process may use."""
    from .voxelpool import default_jobs

    return 1 if args.mt == 0 else (args.jobs or default_jobs())


def add_common_arguments(parser):
    """Add ``-v 0|1|2`` and ``--version``."""
    parser.add_argument("-v", dest="verbose", type=int, choices=(0, 1, 2), default=1,
                        help="verbosity: 0 quiet, 1 progress and summary (default), 2 debug and tracebacks")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")


class Interrupted(KeyboardInterrupt):
    """Raised in the main thread by SIGINT, SIGTERM or SIGHUP: every clean-up that serves Ctrl-C
    (workers stopped, staging folders removed) serves the batch system's signals too."""

    def __init__(self, signum):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def _raise_interrupted(signum, frame):
    for other in STOP_SIGNALS:     # exiting: a second signal must not interrupt the clean-up
        signal.signal(other, signal.SIG_IGN)
    raise Interrupted(signum)


@contextlib.contextmanager
def signals_as_interrupt():
    """Within the block, SIGINT, SIGTERM and SIGHUP raise :class:`Interrupted`; the previous
    handlers are restored after it (``main()`` is also called in-process, by the tests)."""
    previous = {signum: signal.signal(signum, _raise_interrupted) for signum in STOP_SIGNALS}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def exit_code_of(interrupt):
    """128 + the signal's number (130 for a plain KeyboardInterrupt, i.e. SIGINT)."""
    return 128 + getattr(interrupt, "signum", signal.SIGINT)


def run(body, args, prog):
    """Call ``body(args)`` and turn the outcome into an exit code.

    Parameters
    ----------
    body : callable
        Does the work; raises IvimError for user mistakes.
    args : argparse.Namespace
        Parsed arguments (with ``verbose``).
    prog : str
        Script name for messages.

    Returns
    -------
    int
        0, 1 (IvimError), 2 (UsageError), or 128 + the signal's number when stopped by SIGINT (130),
        SIGHUP (129) or SIGTERM (143).
    """
    try:
        with signals_as_interrupt():
            body(args)
    except IvimError as exc:
        if args.verbose >= 2:
            traceback.print_exc()
        message = " ".join(str(exc).split())  # one line, even if a library's message had several
        print(f"{prog}: error: {message}", file=sys.stderr)
        return 2 if isinstance(exc, UsageError) else 1
    except KeyboardInterrupt as exc:
        for signum in STOP_SIGNALS:      # exiting: a second signal changes nothing
            signal.signal(signum, signal.SIG_IGN)
        if args.verbose >= 2:
            traceback.print_exc()
        name = getattr(exc, "signum", None)
        how = f"stopped by {signal.Signals(name).name}" if name not in (None, signal.SIGINT) else "interrupted"
        print(f"{prog}: {how}, no output written", file=sys.stderr)
        return exit_code_of(exc)
    return 0
