"""The numba support every compiled kernel shares: how kernels are compiled and cached, how
the first run of an installation compiles them (:func:`prepare`, with a helper process where a
CPU is idle), the notice shown meanwhile, and the helpers the kernels call (:func:`exp`).

The fast engine, the Bayesian engine and the trust maps' kernels (:mod:`ivim_common.kernels`)
are compiled with :func:`kernel`, so they share one cache policy.
"""
import contextlib
import gc
import importlib
import math
import os
import queue
import subprocess
import sys
import threading
import time

import numba
import numpy as np

from .resources import limit_blas_threads, usable_cpus

# numba's option for code without its reference counting (its runtime, NRT), with which numba
# compiles its own hot helpers; should a numba lack it, the kernels compile with counting.
NO_NRT = {"_nrt": False} if hasattr(numba.core.options.DefaultOptions, "_nrt") else {}


def kernel(func=None, *, entry=False, pointer=False, **options):
    """Decorator: ``numba.njit(func, error_model="numpy", **options)`` for code that allocates
    nothing (its callers hand it its scratch), so compiled without reference counting: less
    code to compile, and none of the atomic count updates that would dominate short kernels.
    No C-callable wrapper, unless ``pointer``: another kernel calls it through a function
    pointer (numba's first-class functions, which need that wrapper).

    ``entry``: the kernel is called from Python, or compiled on its own by :func:`prepare`'s
    helper process: it is cached on disk, beside the package where that is writable, else in
    numba's user cache (without either, it is compiled in each process).  Other kernels are
    cached only within the entries that call them: a cache entry of their own would cost
    some 0.03 s each on the first run (numba writes its machine code), for nothing.  Either
    can be called from Python (tests do).  ``@kernel`` or ``@kernel(entry=True, ...)``.
    """
    if func is None:
        return lambda f: kernel(f, entry=entry, pointer=pointer, **options)
    options = dict(options, error_model="numpy", no_cfunc_wrapper=not pointer, **NO_NRT)
    if not entry:
        return numba.njit(**options)(func)
    try:
        return numba.njit(cache=True, **options)(func)
    except RuntimeError:              # numba: "cannot cache ... as it uses ... no locator available"
        return numba.njit(**options)(func)


def compile_for(kernel, *args, signature=None):
    """Compile ``kernel`` (or load it from the cache) for the types of ``args``, or for a numba
    ``signature``, without running it; nothing if it is compiled for them already (even where
    its compilation is disabled)."""
    types = _arg_types(args, signature)
    if types not in kernel.overloads:
        kernel.compile(signature or types)


def _arg_types(args, signature):
    """The numba types of a kernel's arguments: the signature's, else those of ``args``."""
    return signature.args if signature else tuple(numba.typeof(a) for a in args)


def compiles_here(entry, *args, signature=None):
    """Whether this process compiles ``entry`` for ``args`` or ``signature`` (it is in neither
    this process nor numba's cache: the first run of an installation) and can cache it, so that
    the kernels a helper process compiles meanwhile would be found here.  Reads numba's cache
    index of ``entry`` where it can (some milliseconds); else loads or compiles ``entry``."""
    stats = entry.stats
    if stats.cache_path is None or not os.access(stats.cache_path, os.W_OK):
        return False
    if _arg_types(args, signature) in entry.overloads:
        return False
    try:
        return not _cache_index(entry)
    except Exception:       # another numba, or an unreadable index: find out by loading or compiling
        misses = sum(stats.cache_misses.values())
        compile_for(entry, *args, signature=signature)
        return sum(entry.stats.cache_misses.values()) > misses


def _cache_index(entry):
    """numba's cache index of ``entry`` (its private API, numba 0.59-0.68): what it compiled,
    for this source and numba; empty where the index is missing or stale."""
    return entry._cache._cache_file._load_index()


COMPILE_NOTICE_AFTER_S = 3.0
HELPER_ENV = "IVIM_COMPILE_HELPER"     # 0: :func:`prepare` starts no helper process; 1: whatever the load


@contextlib.contextmanager
def notice_if_slow(enabled, notice):
    """Print ``notice`` on stderr if the block (a compilation) is still running after
    COMPILE_NOTICE_AFTER_S.  Meanwhile the garbage collector runs less often: a compilation
    allocates some million short-lived objects, and the default thresholds would have it walk
    every live object of the process several hundred times (about 10 % of the time)."""
    timer = threading.Timer(COMPILE_NOTICE_AFTER_S, print, args=(notice,), kwargs=dict(file=sys.stderr, flush=True))
    timer.daemon = True
    thresholds = gc.get_threshold()
    gc.set_threshold(50_000, 20, 100)
    if enabled:
        timer.start()
    try:
        yield
    finally:
        timer.cancel()
        gc.set_threshold(*thresholds)


class Helper:
    """A process that runs ``tasks`` ("module:function", in order; each function takes no
    argument and compiles kernels into numba's cache) while this one compiles others, and
    reports each task as it ends.  It imports this copy of the package."""

    def __init__(self, tasks):
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        self.done = set()
        self.process = subprocess.Popen(
            [sys.executable, "-c", _HELPER_CODE, root, *tasks],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        self._lines = queue.Queue()     # the tasks it reports, then None once it has ended
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        for line in self.process.stdout:
            self._lines.put(line.strip())
        self._lines.put(None)

    def wait(self, task, timeout=None):
        """Return once ``task`` has ended, or the helper has; after ``timeout`` seconds
        (default HELPER_TIMEOUT_S) stop the helper and return.  Whatever it did not put in the
        cache, this process then compiles itself."""
        deadline = time.monotonic() + (HELPER_TIMEOUT_S if timeout is None else timeout)
        while task not in self.done and self.process.returncode is None:
            try:
                line = self._lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                self.close()
                return
            if line is None:
                self.process.wait()
                return
            self.done.add(line)

    def close(self):
        """Stop the helper if it still runs (this process stopped short), and reap it."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        self._reader.join(timeout=5)
        self.process.stdout.close()


HELPER_TIMEOUT_S = 60.0    # a task that takes longer is not coming: some 3 s on 2 cores


# The helper's program: this copy of the package (the folder holding it first on the path,
# unless it is found there anyway: a folder of installed packages before the standard library
# could shadow some of it), then the tasks.
_HELPER_CODE = """if True:
    import importlib.util, os, sys
    spec = importlib.util.find_spec("ivim_common")
    if spec is None or os.path.dirname(os.path.dirname(spec.origin)) != sys.argv[1]:
        sys.path.insert(0, sys.argv[1])
    from ivim_common import compiled
    compiled._helper_main(sys.argv[2:])
"""


def _helper_main(tasks):
    limit_blas_threads()
    for task in tasks:
        module, function = task.split(":")
        getattr(importlib.import_module(module), function)()
        print(task, flush=True)


def _idle_cpu():
    """Whether a second CPU is free, on average: at least two for this process (its affinity
    and cgroup quota), and the load average (Unix) below their number.  (Not below their
    number less one: the run that follows ``pip install`` finds a load near 1 on two CPUs.
    Where both are busy, the helper takes its share of them, at a small cost to other work.)"""
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):     # not Unix, or unknown
        load = 0.0
    cpus = usable_cpus()
    return cpus >= 2 and load < cpus


def prepare(modules, announce=True):
    """Make the compiled kernels of ``modules`` ready in this process: each module's
    ``prepare(announce, helper)``, in order, compiles them or loads them from numba's cache.

    Where the first module's ``compiles_here()`` says that its kernels are not in the cache
    (the first run of an installation) and a CPU is idle, a helper process compiles every
    module's ``HELPER_TASKS`` (names of its functions) into the cache meanwhile, and the
    modules' ``prepare`` wait for them (``helper.wait``) and load them: the first run takes
    some 40 % less time (bench/bench_first_run.py).  The environment variable
    IVIM_COMPILE_HELPER set to 0 does without, set to 1 starts one whatever the load.  No
    helper in a frozen application (its executable is not a Python to run the helper with).
    """
    helper = None
    first, wanted = modules[0], os.environ.get(HELPER_ENV)
    try:
        if (wanted != "0" and hasattr(first, "compiles_here") and sys.executable
                and not getattr(sys, "frozen", False) and (wanted == "1" or _idle_cpu())
                and first.compiles_here()):
            try:
                helper = Helper([f"{m.__name__}:{task}" for m in modules for task in getattr(m, "HELPER_TASKS", ())])
            except OSError:               # no process to be had: compile everything here
                helper = None
        for m in modules:
            m.prepare(announce, helper)
    finally:
        if helper:
            helper.close()


_LOG2E = 1.4426950408889634
_LN2_HI, _LN2_LO = 6.93147180369123816490e-01, 1.90821492927058770002e-10   # ln 2 = hi + lo
_ROUND = 6755399441055744.0     # 1.5·2^52: adding it rounds to an integer, kept in the low bits
_C = tuple(1.0 / math.factorial(i) for i in range(14))    # Taylor coefficients of exp


@kernel
def exp(x):
    """exp(x), within 1 ulp of numpy.exp for |x| <= 708 (x is clamped there, so exp(-inf) is
    3.3e-308, not 0; NaN stays NaN),
    in a form that the compiler vectorises (np.exp is a call per element).  exp(x) = 2^n·exp(r), n = round(x / ln 2), |r| <= ln(2)/2, exp(r) by its Taylor
    polynomial of degree 13 (remainder below 1e-17)."""
    t = -708.0 if x < -708.0 else (708.0 if x > 708.0 else x)
    shifted = t * _LOG2E + _ROUND            # n in the low bits of its float64
    n = shifted - _ROUND
    r = (t - n * _LN2_HI) - n * _LN2_LO
    c = _C
    q = ((((((c[13] * r + c[12]) * r + c[11]) * r + c[10]) * r + c[9]) * r + c[8]) * r
         + c[7]) * r + c[6]
    q = (((((q * r + c[5]) * r + c[4]) * r + c[3]) * r + c[2]) * r + c[1]) * r + c[0]
    return q * np.int64((np.float64(shifted).view(np.int64) + 1023) << 52).view(np.float64)

