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
import os
import signal
import sys
import time
import traceback

from . import __version__
from .errors import IvimError, UsageError


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


class Progress:
    """Progress on stderr: a tqdm bar on a terminal; in a batch log (stderr not a terminal) a
    line every LOG_INTERVAL_S seconds; nothing when not ``enabled``.  Used as a context manager
    with ``update(n)``, as tqdm."""

    LOG_INTERVAL_S = 30.0

    def __init__(self, total, unit, enabled=True, prog=None):
        self.total, self.unit, self.done = total, unit, 0
        self.prog = prog or os.path.basename(sys.argv[0])
        self.bar = None
        self.log = enabled and not sys.stderr.isatty()
        if enabled and not self.log:
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit=unit, file=sys.stderr, dynamic_ncols=True)
        self.start = self.last = time.monotonic()

    def update(self, n=1):
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
        elif self.log and time.monotonic() - self.last >= self.LOG_INTERVAL_S:
            self.last = time.monotonic()
            percent = 100.0 * self.done / max(self.total, 1)
            print(f"{self.prog}: {self.done}/{self.total} {self.unit}s ({percent:.0f} %) after "
                  f"{self.last - self.start:.0f} s", file=sys.stderr, flush=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.close()


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
