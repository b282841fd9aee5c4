"""Run a function over chunks of voxels, in worker processes.

Workers are started with the ``spawn`` method and receive everything they need as arguments
(no module globals), so the pool behaves the same on Linux, macOS and Windows.  Chunk results
are put back in order, so the arrays are identical whatever the number of workers and the chunk
size, as long as the function treats each voxel on its own.  The pool knows nothing of what the
function computes.

:class:`WorkerPool` holds the workers of one run (the simulation scripts reuse it for every batch
and SNR step), kills them on any exception or signal so that none outlives the command, and
turns a worker's death into one line; :func:`default_jobs` is the CPUs this process may use.
"""
import concurrent.futures
import concurrent.futures.process
import contextlib
import multiprocessing
import os
import signal as signal_module
import sys

import numpy as np

from . import resources
from .progress import Progress
from .errors import WorkerDiedError, WorkerStartError


def _worker_init():
    """Worker initialiser: the parent handles Ctrl-C, SIGTERM and SIGHUP and stops the workers
    (a signal sent to the whole process group, as ``timeout`` does, must not kill a worker
    first: the parent would report a dead worker instead of the signal); and on Linux a worker
    dies with its parent, should the parent be killed without a chance to stop it."""
    for signum in (signal_module.SIGINT, signal_module.SIGTERM, signal_module.SIGHUP):
        signal_module.signal(signum, signal_module.SIG_IGN)
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, int(signal_module.SIGKILL))


def default_jobs():
    """Worker processes by default: the CPUs this process may use (its CPU affinity, which
    ``taskset`` and SLURM's ``--cpus-per-task`` set, capped by its cgroup CPU quota), not the
    cores of the node (see :func:`ivim_common.resources.usable_cpus`)."""
    return resources.usable_cpus()


def _first_cause(exitcodes):
    """The exit code that most likely broke the pool: once a worker has died, the pool sends
    SIGTERM to the others and :meth:`WorkerPool.stop` SIGKILL, so any other code comes first."""
    return min((code for code in exitcodes if code), default=None,
               key=lambda code: (code == -signal_module.SIGTERM, code == -signal_module.SIGKILL))


MAIN_GUARD = 'if __name__ == "__main__":'


def _main_path():
    """The file of the main module, which every worker runs again as it starts (None: a
    session or ``python -c``, which the workers do not re-run)."""
    return getattr(sys.modules.get("__main__"), "__file__", None)


def _check_main_can_rerun():
    """WorkerStartError where the workers could not re-run the main module: a script read
    from standard input (``python - <<EOF``) has no file to re-run."""
    path = _main_path()
    if path is not None and not os.path.isfile(path):
        raise WorkerStartError(
            f"worker processes cannot start: each runs the main module again, and {path} (a script read "
            f"from standard input) cannot be run again; save the script to a file with its work under "
            f"'{MAIN_GUARD}', or use one job (jobs=1)")


def _describe_exit(exitcode):
    """How a worker ended, in words, from its exit code (negative: killed by that signal)."""
    if exitcode is None or exitcode >= 0:
        return "a worker process died" + (f" (exit code {exitcode})" if exitcode else "")
    try:
        name = signal_module.Signals(-exitcode).name
    except ValueError:
        name = f"signal {-exitcode}"
    why = {"SIGKILL": ", e.g. by the out-of-memory killer", "SIGSEGV": ", a crash"}.get(name, "")
    return f"a worker process was killed by {name}{why}"


class WorkerPool:
    """Worker processes for one run, reused by every :func:`map_chunks` call within it (the
    simulation scripts fit batch after batch, SNR step after SNR step).

    Started with the ``spawn`` method on first use.  On any exception (Ctrl-C, SIGTERM, a
    worker's error) the workers are killed at once, running chunks included, and waited for, so
    no process of the run outlives it.  A worker that dies raises
    :class:`ivim_common.errors.WorkerDiedError` with one line saying what to try (``hint``).

    Parameters
    ----------
    jobs : int
        Worker processes (1: the work stays in this process).
    hint : str
        What to try when a worker dies, e.g. "fewer workers (-j)".
    """

    def __init__(self, jobs, hint="fewer workers (-j) or a smaller --chunk-size"):
        self.jobs, self.hint = max(1, int(jobs)), hint
        self._executor = None
        self._workers = {}          # pid: Process, every worker started
        self._results = 0           # chunks the workers have returned

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.close()
        else:
            self.stop()

    def _start(self):
        if self._executor is None:
            _check_main_can_rerun()
            self._executor = concurrent.futures.ProcessPoolExecutor(
                max_workers=self.jobs, mp_context=multiprocessing.get_context("spawn"),
                initializer=_worker_init)
        return self._executor

    def run(self, calls, on_result):
        """Run ``func(*args, **kwargs)`` for each ``(key, func, args, kwargs)`` of ``calls`` in
        the workers; ``on_result(key, result)`` as each finishes (in any order)."""
        executor = self._start()
        try:
            with resources.blas_threads_limited():  # the workers start on submit and inherit the environment
                futures = {executor.submit(func, *args, **kwargs): key for key, func, args, kwargs in calls}
            self._workers.update(executor._processes)   # the pool forgets a broken pool's workers
            for future in concurrent.futures.as_completed(futures):
                on_result(futures[future], future.result())
                self._results += 1
        except concurrent.futures.process.BrokenProcessPool as exc:
            self.stop()
            code = _first_cause([p.exitcode for p in self._workers.values()])
            if code == 1 and not self._results and _main_path() is not None:
                # exit code 1 before any chunk came back: a worker failed as it re-ran the main module
                raise WorkerStartError(
                    f"a worker process died as it started (exit code 1): each worker runs the main module "
                    f"({_main_path()}) again, so a fit must not run when it is imported; put the script's work "
                    f"under '{MAIN_GUARD}', or use one job (jobs=1); nothing was written") from exc
            raise WorkerDiedError(f"{_describe_exit(code)}; the run stopped and nothing was written; "
                                  f"try {self.hint}") from exc
        except MemoryError as exc:
            self.stop()
            raise WorkerDiedError(f"a worker process ran out of memory; the run stopped and nothing was "
                                  f"written; try {self.hint}") from exc
        except BaseException:
            self.stop()
            raise

    def stop(self):
        """Kill the workers (running chunks too: they would otherwise finish first, minutes with
        lmfit) and wait for them; a second signal must not interrupt this clean-up."""
        if self._executor is None:
            return
        blocked = {signum: signal_module.signal(signum, signal_module.SIG_IGN)
                   for signum in (signal_module.SIGINT, signal_module.SIGTERM, signal_module.SIGHUP)}
        try:
            processes = list({**self._workers, **self._executor._processes}.values())
            for process in processes:
                with contextlib.suppress(OSError, ValueError):
                    process.kill()
            self._executor.shutdown(wait=False, cancel_futures=True)
            for process in processes:
                with contextlib.suppress(OSError, ValueError, AssertionError):
                    process.join(timeout=5)
        finally:
            self._executor = None
            for signum, handler in blocked.items():
                signal_module.signal(signum, handler)

    def close(self):
        """Let the idle workers exit and wait for them."""
        if self._executor is not None:
            self._executor.shutdown()
            self._executor = None


def map_chunks(func, signal, voxel_ids, jobs=None, chunk_size=5000, progress=True, pool=None, **kwargs):
    """``func(signal[chunk], voxel_ids=voxel_ids[chunk], **kwargs)`` over chunks of voxels, in
    worker processes, the chunks' dicts of 1-D arrays put back together in order.

    Parameters
    ----------
    func : callable
        A module-level function (workers import it), returning a dict of arrays (n_chunk,).
    signal : ndarray (n_voxels, n_b)
    voxel_ids : ndarray of int (n_voxels,)
    jobs : int, optional
        Worker processes (default :func:`default_jobs`).  With 1 job, or a single chunk, the
        work stays in this process.  Ignored when ``pool`` is given.
    chunk_size : int
        Voxels per chunk.
    progress : bool
        Progress over voxels on stderr (a bar on a terminal, a line now and then in a batch log,
        see :class:`ivim_common.progress.Progress`).
    pool : WorkerPool, optional
        The run's worker processes, reused from call to call (default: a pool for this call).

    Returns
    -------
    dict of ndarray (n_voxels,)

    Raises
    ------
    KeyboardInterrupt
        On Ctrl-C (or SIGTERM, SIGHUP: :class:`ivim_common.cli.Interrupted`), after stopping
        the workers.
    ivim_common.errors.WorkerDiedError
        A worker process died.
    """
    n_voxels = len(signal)
    starts = range(0, n_voxels, chunk_size)
    out = {}

    def store(start, result):
        for name, values in result.items():
            out.setdefault(name, np.empty(n_voxels, dtype=values.dtype))[start:start + chunk_size] = values
        bar.update(min(chunk_size, n_voxels - start))

    def work(start):
        return dict(signal=signal[start:start + chunk_size], voxel_ids=voxel_ids[start:start + chunk_size],
                    **kwargs)

    with Progress(n_voxels, "voxel", enabled=progress) as bar:
        own_pool = pool is None
        pool = pool or WorkerPool(jobs or default_jobs())
        if pool.jobs <= 1 or len(starts) <= 1:
            for start in starts:
                store(start, func(**work(start)))
            return out
        with pool if own_pool else contextlib.nullcontext():   # a caller's pool outlives the call
            pool.run([(start, func, (), work(start)) for start in starts], store)
    return out
