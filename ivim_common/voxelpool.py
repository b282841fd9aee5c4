"""Run :func:`ivim_common.fit.fit_voxels` over chunks of voxels, in worker processes.

Workers are started with the ``spawn`` method and receive everything they need as arguments
(no module globals), so the pool behaves the same on Linux, macOS and Windows.  Each voxel's
random seed derives from (seed, flat voxel index), and chunk results are put back in order, so
the arrays are identical whatever the number of workers and the chunk size.
"""
import concurrent.futures
import contextlib
import multiprocessing
import os
import signal as signal_module
import sys
import threading

import numpy as np
from tqdm import tqdm

from . import blas_threads_limited, fit, model

# Voxels per chunk: a fast-engine chunk takes well under a second, an lmfit one (about 1-2 s
# a voxel) tens of seconds, which keeps the progress bar moving and Ctrl-C prompt.
DEFAULT_CHUNK_SIZE = {"fast": 5000, "lmfit": 20}
# Loading the compiled fast engine takes well under a second; compiling it (the first run of
# an installation) some 15 s, which is announced once it has taken this long.
COMPILE_NOTICE_AFTER_S = 3.0
COMPILE_NOTICE = ("ivim-toolbox: compiling the fast engine, some 15 s (the first run of an "
                  "installation; it is cached for later runs where it can be written)")


@contextlib.contextmanager
def _notice_if_slow(enabled):
    """Print COMPILE_NOTICE on stderr if the block is still running after COMPILE_NOTICE_AFTER_S."""
    timer = threading.Timer(COMPILE_NOTICE_AFTER_S, print, args=(COMPILE_NOTICE,),
                            kwargs=dict(file=sys.stderr, flush=True))
    timer.daemon = True
    if enabled:
        timer.start()
    try:
        yield
    finally:
        timer.cancel()


_engine_ready = False                     # compiled or loaded in this process


def prepare_engine(engine, announce=True):
    """Compile the fast engine (the first run of an installation) or load it from the cache,
    once per process, saying so on stderr if ``announce`` and that takes over
    COMPILE_NOTICE_AFTER_S; worker processes started afterwards load it from the cache.
    Nothing to do for lmfit."""
    global _engine_ready
    if engine != "fast" or _engine_ready:
        return
    b = np.array([0.0, 50.0, 400.0, 800.0])
    with _notice_if_slow(announce):       # the same compiled code serves every approach
        fit.fit_voxels(b, model.ivim_signal(b, 1000.0, 1e-3, 0.1, 20e-3)[None])
    _engine_ready = True


def _ignore_sigint():
    """Worker initialiser: Ctrl-C is handled by the parent, which stops the workers."""
    signal_module.signal(signal_module.SIGINT, signal_module.SIG_IGN)


def fit_in_chunks(bvals, signal, voxel_ids=None, approach="one-step", bounds_version="2020",
                  engine="fast", seed=0, jobs=None, chunk_size=None, progress=True):
    """Fit many voxels chunk by chunk, in ``jobs`` worker processes.

    Parameters
    ----------
    bvals : array_like (n_b,)
        b-values in s/mm².
    signal : ndarray (n_voxels, n_b)
    voxel_ids : array_like of int (n_voxels,), optional
        Flat indices of the voxels in the volume; each voxel's seed derives from it
        (default ``arange(n_voxels)``).
    approach, bounds_version, engine, seed
        As :func:`ivim_common.fit.fit_voxels`.
    jobs : int, optional
        Worker processes (default: all cores).  With 1 job, or a single chunk, the work stays
        in this process.
    chunk_size : int, optional
        Voxels per chunk (default :data:`DEFAULT_CHUNK_SIZE` of the engine).
    progress : bool
        Show a progress bar over voxels on stderr (only if stderr is a terminal), and say so
        there when the fast engine is being compiled (the first run of an installation).

    Returns
    -------
    dict of ndarray (n_voxels,)
        As :func:`ivim_common.fit.fit_voxels`.

    Raises
    ------
    KeyboardInterrupt
        On Ctrl-C, after cancelling the pending chunks and stopping the workers.
    """
    signal = np.atleast_2d(np.asarray(signal, dtype=float))
    n_voxels = signal.shape[0]
    voxel_ids = np.arange(n_voxels) if voxel_ids is None else np.asarray(voxel_ids)
    chunk_size = chunk_size or DEFAULT_CHUNK_SIZE[engine]
    starts = range(0, n_voxels, chunk_size)
    jobs = min(jobs or os.cpu_count() or 1, len(starts))
    options = dict(approach=approach, bounds_version=bounds_version, engine=engine, seed=seed)
    out = {name: np.empty(n_voxels) for name in fit.OUTPUT_NAMES}

    def store(start, result):
        for name in fit.OUTPUT_NAMES:
            out[name][start:start + chunk_size] = result[name]
        bar.update(len(result["exception"]))

    prepare_engine(engine, announce=progress)   # workers then load it, not each compile it
    with tqdm(total=n_voxels, unit="voxel", file=sys.stderr, dynamic_ncols=True,
              disable=not (progress and sys.stderr.isatty())) as bar:
        if jobs <= 1:
            for start in starts:
                stop = start + chunk_size
                store(start, fit.fit_voxels(bvals, signal[start:stop], voxel_ids=voxel_ids[start:stop],
                                            **options))
            return out
        pool = concurrent.futures.ProcessPoolExecutor(
            max_workers=jobs, mp_context=multiprocessing.get_context("spawn"), initializer=_ignore_sigint)
        try:
            with blas_threads_limited():  # the workers start on submit and inherit the environment
                futures = {pool.submit(fit.fit_voxels, bvals, signal[start:start + chunk_size],
                                       voxel_ids=voxel_ids[start:start + chunk_size], **options): start
                           for start in starts}
            for future in concurrent.futures.as_completed(futures):
                store(futures[future], future.result())
        except BaseException:
            # Stop the running chunks too: they would otherwise finish first (minutes with lmfit).
            # A second Ctrl-C must not interrupt this clean-up.
            previous = signal_module.signal(signal_module.SIGINT, signal_module.SIG_IGN)
            try:
                for process in list(pool._processes.values()):
                    process.terminate()
                pool.shutdown(wait=False, cancel_futures=True)
            finally:
                signal_module.signal(signal_module.SIGINT, previous)
            raise
        pool.shutdown()
    return out
