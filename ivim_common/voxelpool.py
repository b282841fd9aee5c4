"""Run a function over chunks of voxels, in worker processes.

Workers are started with the ``spawn`` method and receive everything they need as arguments
(no module globals), so the pool behaves the same on Linux, macOS and Windows.  Chunk results
are put back in order, so the arrays are identical whatever the number of workers and the chunk
size, as long as the function treats each voxel on its own.  The pool knows nothing of what the
function computes.
"""
import concurrent.futures
import multiprocessing
import os
import signal as signal_module
import sys

import numpy as np
from tqdm import tqdm

from . import blas_threads_limited


def _ignore_sigint():
    """Worker initialiser: Ctrl-C is handled by the parent, which stops the workers."""
    signal_module.signal(signal_module.SIGINT, signal_module.SIG_IGN)


def map_chunks(func, signal, voxel_ids, jobs=1, chunk_size=5000, progress=True, **kwargs):
    """``func(signal[chunk], voxel_ids=voxel_ids[chunk], **kwargs)`` over chunks of voxels, in
    ``jobs`` worker processes, the chunks' dicts of 1-D arrays put back together in order.

    Parameters
    ----------
    func : callable
        A module-level function (workers import it), returning a dict of arrays (n_chunk,).
    signal : ndarray (n_voxels, n_b)
    voxel_ids : ndarray of int (n_voxels,)
    jobs : int
        Worker processes (default all cores).  With 1 job, or a single chunk, the work stays in
        this process.
    chunk_size : int
        Voxels per chunk.
    progress : bool
        A progress bar over voxels on stderr (only if stderr is a terminal).

    Returns
    -------
    dict of ndarray (n_voxels,)

    Raises
    ------
    KeyboardInterrupt
        On Ctrl-C, after cancelling the pending chunks and stopping the workers.
    """
    n_voxels = len(signal)
    starts = range(0, n_voxels, chunk_size)
    jobs = min(jobs or os.cpu_count() or 1, len(starts))
    out = {}

    def store(start, result):
        for name, values in result.items():
            out.setdefault(name, np.empty(n_voxels, dtype=values.dtype))[start:start + chunk_size] = values
        bar.update(min(chunk_size, n_voxels - start))

    def work(start):
        return dict(signal=signal[start:start + chunk_size], voxel_ids=voxel_ids[start:start + chunk_size],
                    **kwargs)

    with tqdm(total=n_voxels, unit="voxel", file=sys.stderr, dynamic_ncols=True,
              disable=not (progress and sys.stderr.isatty())) as bar:
        if jobs <= 1:
            for start in starts:
                store(start, func(**work(start)))
            return out
        pool = concurrent.futures.ProcessPoolExecutor(
            max_workers=jobs, mp_context=multiprocessing.get_context("spawn"), initializer=_ignore_sigint)
        try:
            with blas_threads_limited():  # the workers start on submit and inherit the environment
                futures = {pool.submit(func, **work(start)): start for start in starts}
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
