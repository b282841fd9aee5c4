"""Every top-level script: --help exits 0 with a worked example, no arguments is a usage error."""
import glob
import os

import pytest

from conftest import REPO, run_script

SCRIPTS = sorted(os.path.basename(p) for p in glob.glob(os.path.join(REPO, "ivim_*.py")))


def test_scripts_found():
    assert "ivim_fitting.py" in SCRIPTS


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_exits_0(script):
    result = run_script(script, "--help")
    assert result.returncode == 0, result.stderr
    assert "example" in result.stdout.lower()


@pytest.mark.parametrize("script", SCRIPTS)
def test_no_arguments_exits_2(script):
    result = run_script(script)
    assert result.returncode == 2
    assert "error" in result.stderr


def test_ci_runs_the_readme_test_command():
    with open(os.path.join(REPO, "README.md"), encoding="utf-8") as f:
        readme = f.read()
    with open(os.path.join(REPO, ".ci", "run"), encoding="utf-8") as f:
        ci_lines = f.read().splitlines()
    command = 'python3 -m venv .venv && . .venv/bin/activate && pip install ".[test]" && python -m pytest -q tests'
    assert f"```bash\n{command}\n```" in readme
    assert command in ci_lines
