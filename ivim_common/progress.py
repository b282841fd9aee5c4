"""Progress of long work on stderr, for the scripts and the voxel pool alike.  Only the
standard library is imported here (tqdm when a bar is shown)."""
import os
import sys
import time


def _interval_from_environment(default=30.0):
    try:
        return max(0.0, float(os.environ.get("IVIM_PROGRESS_INTERVAL_S", default)))
    except ValueError:         # a bad value in the environment is no reason to stop a run
        return default


class Progress:
    """Progress on stderr: a tqdm bar on a terminal; in a batch log (stderr not a terminal) a
    line every LOG_INTERVAL_S seconds ($IVIM_PROGRESS_INTERVAL_S if set; the GUI sets 0: a line
    at every update, which it reads); nothing when not ``enabled``.  Used as a context manager
    with ``update(n)``, as tqdm."""

    LOG_INTERVAL_S = _interval_from_environment()

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
