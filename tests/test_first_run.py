"""The first run of an installation: a helper process compiles part of the kernels into numba's
cache meanwhile (:func:`ivim_common.compiled.prepare`), and the maps are those of a run without."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from ivim_common import compiled

# In a fresh process: fit seeded voxels with the fast engine (trust maps on) and the Bayesian
# engine; save the maps; print how many helpers started, how many times each kernel that a
# helper compiles was loaded from the cache, how many kernels this process compiled (cache
# misses), and the most type signatures any kernel has.
FIT = """if True:
    import json, sys
    import numpy as np
    from ivim_common import IvimModel, compiled, kernels, model
    from ivim_common.engines import bayes, fast
    started = []
    Helper = compiled.Helper
    compiled.Helper = lambda tasks: started.append(tasks) or Helper(tasks)
    b = np.array([0., 10, 20, 40, 80, 110, 140, 170, 200, 300, 400, 500, 600, 700, 800])
    rng = np.random.default_rng(11)
    truth = np.column_stack([rng.uniform(500, 900, 40), rng.uniform(0.5e-3, 1.5e-3, 40),
                             rng.uniform(0.05, 0.2, 40), rng.uniform(10e-3, 40e-3, 40)])
    signal = np.abs(model.ivim_signal(b, *truth.T) + rng.normal(0, 15, (40, b.size)))
    maps = {}
    for engine in ("fast", "bayes"):
        for name, value in IvimModel(b, engine=engine).fit(signal).maps.items():
            maps[f"{engine}_{name}"] = value
    np.savez(sys.argv[1], **maps)
    every = [k for mod in (fast, bayes, kernels) for k in vars(mod).values() if hasattr(k, "overloads")]
    print(json.dumps({"helpers": len(started),
                      "loaded": [sum(k.stats.cache_hits.values()) for k in (fast._grid, kernels.fit_mono,
                                 kernels.fisher_sd, bayes._summaries, bayes._fit_kernel)],
                      "compiled": sum(sum(k.stats.cache_misses.values()) for k in every),
                      "signatures": max(len(k.overloads) for k in every)}))
"""


def _first_run(tmp_path, helper, cache):
    out = tmp_path / f"maps{helper}{cache}.npz"
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / cache), IVIM_COMPILE_HELPER=helper)
    run = subprocess.run([sys.executable, "-c", FIT, str(out)], env=env, capture_output=True, text=True,
                         check=True, stdin=subprocess.DEVNULL)
    with np.load(out, allow_pickle=False) as maps:
        return json.loads(run.stdout), dict(maps)


@pytest.mark.slow
def test_a_helper_compiles_part_of_the_first_run_and_the_maps_are_the_same(tmp_path):
    """With a helper (IVIM_COMPILE_HELPER=1), this process loads the fast engine's grid search,
    the trust maps' kernels and the Bayesian posterior's summaries and its kernel that calls
    them from the cache, where the helper put them, and compiles no kernel twice; without (0),
    it compiles them all itself.
    Every map is the same, bit for bit.  With the cache filled, no helper starts and nothing
    is compiled."""
    first, maps = _first_run(tmp_path, "1", "cache")
    alone, maps_alone = _first_run(tmp_path, "0", "other")
    again, maps_again = _first_run(tmp_path, "1", "cache")
    assert first["helpers"] == 2 and all(n >= 1 for n in first["loaded"]), first
    assert alone["helpers"] == 0 and not any(alone["loaded"]) and alone["compiled"] > 0, alone
    assert first["signatures"] == alone["signatures"] == 1
    assert again["helpers"] == 0 and again["compiled"] == 0, again
    assert maps.keys() == maps_alone.keys() == maps_again.keys() and len(maps) > 30
    for name in maps:
        np.testing.assert_array_equal(maps[name], maps_alone[name], err_msg=name)
        np.testing.assert_array_equal(maps[name], maps_again[name], err_msg=name)
    assert np.nanmedian(np.abs(maps["fast_Fivim"] - maps["bayes_Fivim"])) < 0.05     # fitted, not empty


def test_a_helper_that_fails_or_is_stopped_leaves_nothing_behind():
    """A task that cannot run ends the helper: waiting for any task returns, and this process
    compiles what it needs itself.  Closing a helper that still runs kills it."""
    failing = compiled.Helper(["ivim_common.no_such_module:prepare", "ivim_common.trust:prepare"])
    failing.wait("ivim_common.trust:prepare")
    assert failing.done == set()
    failing.close()
    assert failing.process.returncode != 0
    running = compiled.Helper(["ivim_common.engines.fast:_compile_grid"])
    running.close()
    assert running.process.returncode != 0         # killed, not finished
    late = compiled.Helper(["ivim_common.engines.fast:_compile_grid"])
    late.wait("ivim_common.engines.fast:_compile_grid", timeout=0.01)    # not coming: stopped
    assert late.process.returncode != 0 and late.done == set()


# In a fresh process with an empty or filled cache: whether compiled.compiles_here says that a
# small cached kernel must be compiled, read from numba's cache index, then as it knows it
# where that index cannot be read (it loads or compiles the kernel); then the kernel runs.
PROBE = """if True:
    import sys
    sys.path.insert(0, sys.argv[1])
    from ivim_common import compiled
    from probe_kernel import add_one
    by_index = compiled.compiles_here(add_one, 1.0)
    def unreadable(entry):
        raise AttributeError("no such private API")
    compiled._cache_index = unreadable
    by_compiling = compiled.compiles_here(add_one, 1.0)
    print(by_index, by_compiling, add_one(1.0))
"""


def test_the_first_run_is_told_from_the_cache_index_or_else_by_compiling(tmp_path):
    (tmp_path / "probe_kernel.py").write_text(
        "from ivim_common.compiled import kernel\n\n\n@kernel(entry=True)\ndef add_one(x):\n    return x + 1.0\n")
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "cache"))

    def probe():
        return subprocess.run([sys.executable, "-c", PROBE, str(tmp_path)], env=env, capture_output=True, text=True,
                              check=True, stdin=subprocess.DEVNULL).stdout.split()

    assert probe() == ["True", "True", "2.0"]       # empty cache: compiled here (then cached)
    assert probe() == ["False", "False", "2.0"]     # filled: loaded
