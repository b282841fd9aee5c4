"""Every top-level script: --help exits 0 with a worked example, no arguments is a usage error."""
import glob
import os
import re
import subprocess
import sys

import pytest

from conftest import REPO, run_script

SCRIPTS = sorted(os.path.basename(p) for p in glob.glob(os.path.join(REPO, "ivim_*.py")))


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_exits_0(script):
    result = run_script(script, "--help")
    assert result.returncode == 0, result.stderr
    assert "example" in result.stdout.lower()


@pytest.mark.parametrize("script", [s for s in SCRIPTS if s != "ivim_toolbox.py"])   # the GUI: test_gui.py
def test_no_arguments_exits_2(script):
    result = run_script(script)
    assert result.returncode == 2
    assert "error" in result.stderr


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_does_not_import_numpy(script):
    """--help stays instant: numpy (about 0.2 s) is imported only when the work starts."""
    result = subprocess.run([sys.executable, "-X", "importtime", os.path.join(REPO, script), "--help"], cwd=REPO,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    imported = {line.rsplit("|", 1)[1].strip() for line in result.stderr.splitlines() if "|" in line}
    assert "ivim_common.cli" in imported and "numpy" not in imported


def _entry_points():
    """{command: (module, function)} from pyproject.toml's [project.scripts]."""
    with open(os.path.join(REPO, "pyproject.toml"), encoding="utf-8") as f:
        section = f.read().split("[project.scripts]")[1].split("\n[")[0]
    return {name: (module, func) for name, module, func in re.findall(r'"([^"]+)" = "([\w.]+):(\w+)"', section)}


def test_every_script_is_an_installed_command_and_every_command_a_script():
    assert set(SCRIPTS) == set(_entry_points()) and len(SCRIPTS) >= 6


@pytest.mark.parametrize("script", SCRIPTS)
def test_installed_command_runs(script, tmp_path):
    """pip's launcher bin/<script> must not shadow the module it imports (both are named ivim_xxx)."""
    module, func = _entry_points()[script]
    launcher = tmp_path / "bin" / script
    launcher.parent.mkdir()
    launcher.write_text(f"import sys\nfrom {module} import {func}\n"
                        f"if __name__ == '__main__':\n    sys.exit({func}())\n")
    result = subprocess.run([sys.executable, str(launcher), "--help"], cwd=tmp_path, capture_output=True,
                            text=True, env={**os.environ, "PYTHONPATH": REPO}, timeout=60)
    assert result.returncode == 0, result.stderr
    assert f"usage: {script}" in result.stdout


def test_ci_runs_the_readme_test_command():
    with open(os.path.join(REPO, "README.md"), encoding="utf-8") as f:
        readme = f.read()
    with open(os.path.join(REPO, ".ci", "run"), encoding="utf-8") as f:
        ci_lines = f.read().splitlines()
    command = 'python3 -m venv .venv && . .venv/bin/activate && pip install ".[test]" && python -m pytest -q'
    assert f"```bash\n{command}\n```" in readme
    assert command in ci_lines


@pytest.mark.slow
def test_readme_python_api_example_runs(tmp_path):
    """The README's Python API example, run as written (beside a link to test_data/)."""
    with open(os.path.join(REPO, "README.md"), encoding="utf-8") as f:
        readme = f.read()
    section = readme[readme.index("## Python API"):]
    code = section[section.index("```python\n") + 10:section.index("\n```", section.index("```python"))]
    os.symlink(os.path.join(REPO, "test_data"), tmp_path / "test_data")
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": REPO}, timeout=300)
    assert result.returncode == 0, result.stderr
    f_median, d_median = (float(v) for v in result.stdout.split())
    assert 0 < f_median < 0.35 and 0.1e-3 < d_median < 3e-3
    assert sorted(os.listdir(tmp_path / "maps_from_python")) == sorted(
        ["ivim_fitting.json"] + [f"{name}_map.nii.gz" for name in
                                 ("S0", "D", "Fivim", "Dstar", "FivimXDstar", "AIC", "R2", "exception",
                                  "ADC", "AICc", "AICc_mono", "model_choice", "RMSE", "bounds_hit",
                                  "S0_sd", "D_sd", "Fivim_sd", "Dstar_sd")])


def test_every_subpackage_is_installed():
    """pyproject's packages list every package of ivim_common (the tests import the source tree,
    so a package missing there would pass them and break every installed command)."""
    with open(os.path.join(REPO, "pyproject.toml"), encoding="utf-8") as f:
        listed = set(re.search(r"^packages = \[(.*)\]$", f.read(), re.M).group(1).replace('"', "").split(", "))
    found = {os.path.relpath(root, REPO).replace(os.sep, ".") for root, _, files in os.walk(os.path.join(REPO, "ivim_common"))
             if "__init__.py" in files}
    assert listed == found
