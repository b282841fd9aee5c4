"""The examples of the README and of the documentation pages (docs/): every fenced ``python`` block
runs, every call of one of our scripts in a fenced ``bash`` block parses with that script's parser
(so a renamed flag fails here), and those whose input files exist (the test data's) run.

A block right after a line ``<!-- skip-test ... -->`` is left out.
"""
import glob
import importlib
import os
import re
import shlex
import shutil
import subprocess
import sys

import pytest

from conftest import REPO

PAGES = ["README.md"] + sorted(os.path.relpath(p, REPO)
                               for p in glob.glob(os.path.join(REPO, "docs", "**", "*.md"), recursive=True))
FENCE = re.compile(r"^```(\w*)\n(.*?)^```$", re.M | re.S)
SKIP_MARKER = "<!-- skip-test"
SCRIPT = re.compile(r"ivim_\w+\.py")
# Flags that name files the command reads: a command runs when all of them exist.
INPUT_FLAGS = {"-i", "--input", "-input", "-b", "--bval", "--bvec", "-ma", "--mask", "-dwi", "-maps"}
# Shell variables of the job scripts: ${NAME:-default} gives its default, any other one 1.
SHELL_VARIABLE = re.compile(r"\$\{\w+(?::-([^}]*))?\}")


def blocks_of(text, language):
    """[(line, code)] of the fenced blocks of a page in ``language``, skip-marked ones left out."""
    found = []
    for block in FENCE.finditer(text):
        line_before = text[:block.start()].rstrip("\n").rsplit("\n", 1)[-1]
        if block.group(1) == language and not line_before.startswith(SKIP_MARKER):
            found.append((text.count("\n", 0, block.start()) + 1, block.group(2)))
    return found


def fenced_blocks(language):
    """[(page:line, code)] of the fenced blocks in ``language`` of every page, in page order."""
    found = []
    for page in PAGES:
        with open(os.path.join(REPO, page), encoding="utf-8") as f:
            found += [(f"{page}:{line}", code) for line, code in blocks_of(f.read(), language)]
    return found


def script_calls(code):
    """[(folder, argv)] of the calls of our scripts in a bash block: one per line, per ``&&`` part and
    per quoted ``--wrap`` command; ``cd`` moves the folder the later calls run in."""
    calls, folder = [], "."
    for line in SHELL_VARIABLE.sub(lambda m: m.group(1) or "1", code.replace("\\\n", " ")).splitlines():
        for part in line.split(" && "):
            words = shlex.split(part, comments=True)
            if words[:1] == ["cd"]:
                folder = os.path.normpath(os.path.join(folder, words[1]))
            commands = [words] + [shlex.split(w) for w in words[1:] if SCRIPT.match(w)]
            calls += [(folder, argv) for argv in commands if argv and SCRIPT.fullmatch(argv[0])]
    return calls


PYTHON_BLOCKS = fenced_blocks("python")
CALLS = [(where, folder, argv) for where, code in fenced_blocks("bash") for folder, argv in script_calls(code)]


def test_the_pages_have_examples():
    """The extraction finds what the pages hold (a broken pattern would make every test below vacuous)."""
    assert len(PYTHON_BLOCKS) >= 2 and len(CALLS) >= 20
    scripts = {os.path.basename(p) for p in glob.glob(os.path.join(REPO, "ivim_*.py"))}
    called = {argv[0] for _, _, argv in CALLS}
    assert called <= scripts, called - scripts     # a renamed or removed script
    assert {"ivim_fitting.py", "ivim_view_fits.py", "ivim_simu_plot.py", "ivim_simu_optimize_bvals.py",
            "ivim_simu_compute_error_nonoise.py", "ivim_simu_compute_error_noise.py",
            "ivim_simu_compute_required_snr.py"} <= called


def test_blocks_of_a_page_by_language_without_the_skip_marked():
    text = ("# page\n\n```bash\nivim_a.py\n```\n\n<!-- skip-test: needs a cluster -->\n```bash\nivim_b.py\n```\n"
            "```python\nprint(1)\n```\nsome `inline ```bash` text\n")
    assert blocks_of(text, "bash") == [(3, "ivim_a.py\n")]
    assert blocks_of(text, "python") == [(11, "print(1)\n")]


def test_script_calls_split_lines_cd_and_wrapped_commands():
    code = ('cd test_data\nivim_fitting.py -i a.nii.gz \\\n    -o "my maps"  # note\n'
            'sbatch --wrap "ivim_simu_plot.py -input x_${ID}.npz" && ivim_view_fits.py -i m.nii.gz -j "${N:-2}"\n')
    assert script_calls(code) == [("test_data", ["ivim_fitting.py", "-i", "a.nii.gz", "-o", "my maps"]),
                                  ("test_data", ["ivim_simu_plot.py", "-input", "x_1.npz"]),
                                  ("test_data", ["ivim_view_fits.py", "-i", "m.nii.gz", "-j", "2"])]


@pytest.mark.parametrize("where, folder, argv", CALLS, ids=[f"{w}:{a[0]}" for w, _, a in CALLS])
def test_documented_command_parses(where, folder, argv):
    parser = importlib.import_module(argv[0][:-3]).get_parser()
    try:
        parser.parse_args(argv[1:])
    except SystemExit as exc:
        pytest.fail(f"{where}: {shlex.join(argv)} does not parse (exit {exc.code})")


def _runnable(argv, cwd):
    """Names input files, all of which exist, and needs no display (the viewer's window waits for a person)."""
    inputs = [value for flag, value in zip(argv, argv[1:]) if flag in INPUT_FLAGS]
    interactive = argv[0] == "ivim_view_fits.py" and not {"--save", "--montage"} & set(argv)
    return inputs and not interactive and all(glob.glob(str(cwd / path)) for path in inputs)


def _copy_of_test_data(folder):
    shutil.copytree(os.path.join(REPO, "test_data"), folder / "test_data")
    return {**os.environ, "PYTHONPATH": REPO, "MPLBACKEND": "Agg"}


@pytest.mark.slow
def test_documented_commands_with_existing_inputs_run(tmp_path):
    """In page order, in one folder with a copy of test_data/: each distinct call whose input files
    exist by then (the quick start's fit, then the viewer on its maps...) exits 0."""
    env = _copy_of_test_data(tmp_path)
    ran = []
    for where, folder, argv in CALLS:
        cwd = tmp_path / folder
        if argv in ran or not _runnable(argv, cwd):
            continue
        args = [a for arg in argv[1:] for a in (sorted(glob.glob(str(cwd / arg))) if "*" in arg else [arg])]
        result = subprocess.run([sys.executable, os.path.join(REPO, argv[0]), *args], cwd=cwd, env=env,
                                capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=300)
        assert result.returncode == 0, f"{where}: {shlex.join(argv)}\n{result.stderr}"
        ran.append(argv)
    assert len(ran) >= 4, ran
    assert (tmp_path / "ivim_maps_rl" / "Fivim_map.nii.gz").exists() and (tmp_path / "voxel_64_64_2.png").exists()


@pytest.mark.slow
@pytest.mark.parametrize("code", sorted({code for _, code in PYTHON_BLOCKS}),
                         ids=lambda code: next(w for w, c in PYTHON_BLOCKS if c == code))
def test_documented_python_runs(code, tmp_path):
    """Each distinct python block, run as written beside a copy of test_data/."""
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=_copy_of_test_data(tmp_path),
                            capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=300)
    assert result.returncode == 0, result.stderr


def test_bench_scripts_named_in_the_pages_exist():
    named = {m for _, code in fenced_blocks("bash") for m in re.findall(r"python (bench/\w+\.py)", code)}
    named |= {m for page in PAGES for m in re.findall(r"`(bench/\w+\.py)", open(os.path.join(REPO, page), encoding="utf-8").read())}
    assert named and all(os.path.exists(os.path.join(REPO, path)) for path in named), named


def test_readme_links_reach_existing_pages_and_headings():
    """The README is outside the site that mkdocs checks: its relative links are checked here (anchors
    as GitHub makes them from a heading: lower case, punctuation dropped, spaces as hyphens)."""
    with open(os.path.join(REPO, "README.md"), encoding="utf-8") as f:
        links = re.findall(r"\]\(((?!https?://)[^)#]+)(?:#([^)]+))?\)", f.read())
    assert len(links) >= 10
    for path, anchor in links:
        assert os.path.exists(os.path.join(REPO, path)), path
        if anchor:
            with open(os.path.join(REPO, path), encoding="utf-8") as f:
                headings = re.findall(r"^#+ (.+)$", f.read(), re.M)
            assert anchor in {re.sub(r"[^\w\- ]", "", h).strip().lower().replace(" ", "-") for h in headings}, anchor
