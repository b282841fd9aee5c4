#!/usr/bin/env python
"""First-run time: what the first run of an installation pays to compile, measured here.

Each case runs in a subprocess whose NUMBA_CACHE_DIR is a fresh temporary folder, so numba
finds nothing cached and writes its cache there (not beside the package): the "cold" run is the
first run of an installation, the "warm" run the same command again.  Cases:

- ``readme``: the README's first command on the test data (fast engine, trust maps on);
- ``bayes``: the same with ``--engine bayes``, in a cache that already holds the fast engine and
  the trust kernels (what the first use of the Bayesian engine adds);
- ``fast``, ``trust``, ``bayes-only``: each module's kernels made ready (compiled or loaded)
  alone, as a fit does it (``compiled.prepare``), so the trust kernels' share is the difference
  between ``readme`` and ``fast`` (the maps themselves cannot be turned off on the command line).

On the first run, a helper process compiles part of the kernels where a CPU is idle
(:func:`ivim_common.compiled.prepare`): ``--helper 0`` measures without it, ``--helper 1`` with it
whatever the load.

Wall time counts whatever else runs on the machine; CPU time (user + system of the subprocess
and its workers) much less so: both are printed, with the load.  With ``--baseline TREE`` (a
checkout of another version, e.g. ``git worktree add ../base main``) every case also runs that
tree's code, interleaved with this one's, and the ratios are printed.

    python bench/bench_first_run.py                                  # about 1 min
    python bench/bench_first_run.py --baseline ../base --repeat 3    # before/after, 3 rounds
    python bench/bench_first_run.py --helper 0 --cases readme        # without the helper
"""
import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(HERE, "test_data")
README = ["-i", os.path.join(DATA, "dwi_rl.nii.gz"), "-b", os.path.join(DATA, "bval_rl.txt"),
          "-ma", os.path.join(DATA, "cord_seg_dilated.nii.gz"), "-mo", "one-step"]


def _fitting(tree, *extra):
    """Python code running ivim_fitting.py of ``tree`` as its installed command does."""
    argv = ["ivim_fitting.py", *README, "-o", "maps", "--force", *extra]
    return (f"import sys; sys.path.insert(0, {tree!r}); sys.argv = {argv!r}; "
            "from ivim_common import commands; commands.ivim_fitting()")


def _prepare(tree, module):
    """Python code making a module's kernels ready as a fit does (compiled.prepare, where the
    tree has it: with a helper process on the first run where a CPU is idle)."""
    return (f"import sys; sys.path.insert(0, {tree!r}); from ivim_common.resources import limit_blas_threads; limit_blas_threads(); "
            f"from ivim_common import compiled; import ivim_common{module} as m; "
            "compiled.prepare([m], announce=False) if hasattr(compiled, 'prepare') else m.prepare(announce=False)")


# name: (code that fills the cache first, or None; the code timed), both for a tree
CASES = {
    "readme": (None, lambda tree: _fitting(tree)),
    "bayes": (lambda tree: _fitting(tree), lambda tree: _fitting(tree, "--engine", "bayes")),
    "fast": (None, lambda tree: _prepare(tree, ".engines.fast")),
    "trust": (None, lambda tree: _prepare(tree, ".trust")),
    "bayes-only": (None, lambda tree: _prepare(tree, ".engines.bayes")),
}


HELPER = {}     # the environment's IVIM_COMPILE_HELPER, from --helper


def _timed(code, cache, workdir):
    """Wall and CPU seconds of ``python -c code`` with NUMBA_CACHE_DIR=cache."""
    env = dict(os.environ, NUMBA_CACHE_DIR=cache, **HELPER)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], cwd=workdir, env=env, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def measure(case, tree):
    """(cold wall, cold CPU, warm wall, warm CPU) of a case with a fresh cache."""
    fill, code = CASES[case]
    with tempfile.TemporaryDirectory() as cache, tempfile.TemporaryDirectory() as workdir:
        if fill:
            _timed(fill(tree), cache, workdir)
        return _timed(code(tree), cache, workdir) + _timed(code(tree), cache, workdir)


def _medians(rows):
    return [sorted(column)[len(column) // 2] for column in zip(*rows)]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", metavar="TREE", help="another checkout to measure in the same run")
    parser.add_argument("--repeat", type=int, default=1, help="rounds of every case (default: 1)")
    parser.add_argument("--cases", nargs="+", choices=CASES, default=list(CASES))
    parser.add_argument("--helper", choices=("auto", "0", "1"), default="auto",
                        help="IVIM_COMPILE_HELPER of every run: auto (unset: a helper process where a CPU is "
                             "idle), 0 (none), 1 (always) (default: %(default)s)")
    args = parser.parse_args()
    if args.helper != "auto":
        HELPER["IVIM_COMPILE_HELPER"] = args.helper
    trees = {"this": HERE}
    if args.baseline:
        trees["baseline"] = os.path.abspath(args.baseline)
    print(f"load before: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs; seconds, cold = empty numba cache; "
          f"helper: {args.helper}")
    print(f"{'case':11s} {'tree':9s} {'cold wall':>9s} {'cold CPU':>9s} {'warm wall':>9s} {'warm CPU':>9s}"
          f" {'compile CPU':>11s}")
    results = {}
    for _ in range(args.repeat):
        for case in args.cases:
            for name, tree in trees.items():            # interleaved: the load hits both alike
                cold_wall, cold_cpu, warm_wall, warm_cpu = row = measure(case, tree)
                results.setdefault((case, name), []).append(row)
                print(f"{case:11s} {name:9s} {cold_wall:9.2f} {cold_cpu:9.2f} {warm_wall:9.2f} {warm_cpu:9.2f}"
                      f" {cold_cpu - warm_cpu:11.2f}", flush=True)
    if args.baseline:
        print("\nthis / baseline, medians over rounds (compile CPU = cold CPU - warm CPU)")
        for case in args.cases:
            (cw, cc, ww, wc), (bcw, bcc, bww, bwc) = (_medians(results[case, name]) for name in trees)
            print(f"{case:11s} cold wall {cw / bcw:5.2f}  cold CPU {cc / bcc:5.2f}  warm wall {ww / bww:5.2f}"
                  f"  compile CPU {(cc - wc) / (bcc - bwc):5.2f}")
    print(f"load after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
