"""ivim_toolbox.py: both tabs driven through the public contract of ivim_common.gui and through
real mouse clicks and key presses (xdotool) on an Xvfb display started for these tests."""
import argparse
import glob
import json
import os
import shlex
import shutil
import subprocess
import sys
import time

import nibabel as nib
import numpy as np
import pytest

from conftest import REPO, run_script
from ivim_common import cli
from ivim_common.constants import FIT_SIDECAR, MAP_FILES

TEST_DATA = os.path.join(REPO, "test_data")
DWI, BVAL, MASK = (os.path.join(TEST_DATA, name) for name in ("dwi_rl.nii.gz", "bval_rl.txt", "cord_seg_dilated.nii.gz"))
FIT_ARGS = ["-i", DWI, "-b", BVAL, "-ma", MASK, "-j", "2"]
SNR_ARGS = ["-F", "0.05:3:0.3", "-Dstar", "5e-3:3:30e-3", "-D", "1e-3", "-model", "one-step", "--method", "crlb",
            "--n-draws", "50", "-j", "1", "-ofolder", "snr"]              # in the order of the tab's fields
CORD_VOXEL = (64, 68, 3)            # inside the mask


def test_without_display_one_line_and_exit_1():
    env = {k: v for k, v in os.environ.items() if k != "DISPLAY"}
    result = subprocess.run([sys.executable, os.path.join(REPO, "ivim_toolbox.py")], env=env, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "no display" in result.stderr


def test_without_tkinter_one_line_and_exit_1():
    code = "import sys; sys.modules['tkinter'] = None; import ivim_toolbox; sys.exit(ivim_toolbox.main([]))"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, env={**os.environ, "DISPLAY": ":0"},
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "python3-tk" in result.stderr


def test_unsplittable_arguments_a_usage_error():
    import ivim_toolbox

    result = subprocess.run([sys.executable, os.path.join(REPO, "ivim_toolbox.py"), "--fit", '-i "dwi.nii.gz'],
                            env={**os.environ, "DISPLAY": ""}, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "argument --fit: cannot split" in result.stderr
    assert ivim_toolbox.get_parser().parse_args(["--fit", "-i 'a b.nii.gz' -o x"]).fit == ["-i", "a b.nii.gz", "-o", "x"]


def free_display():
    for n in range(90, 200):
        if not os.path.exists(f"/tmp/.X{n}-lock") and not os.path.exists(f"/tmp/.X11-unix/X{n}"):
            return n
    pytest.skip("no free X display number")


@pytest.fixture(scope="module")
def display():
    """An Xvfb display, set as $DISPLAY for these tests only."""
    pytest.importorskip("tkinter", reason="tkinter is missing (python3-tk)")
    for tool in ("Xvfb", "xdotool"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is missing (Debian: apt-get install xvfb xdotool)")
    n = free_display()
    server = subprocess.Popen(["Xvfb", f":{n}", "-screen", "0", "1280x1024x24", "-nolisten", "tcp"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while not os.path.exists(f"/tmp/.X11-unix/X{n}"):
        if server.poll() is not None or time.monotonic() > deadline:
            pytest.skip("Xvfb did not start")
        time.sleep(0.05)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DISPLAY", f":{n}")
        yield f":{n}"
    server.terminate()
    server.wait(10)


@pytest.fixture
def app(display, tmp_path, monkeypatch):
    from ivim_common import gui

    monkeypatch.chdir(tmp_path)
    window = gui.ToolboxApp()
    pump(window)
    yield window
    window.close()


def pump(app, seconds=0.3):
    """Serve the window's events (the X events xdotool sent) for a while."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        app.update()
        time.sleep(0.01)


def until(app, condition, timeout=120):
    end = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < end, "timed out"
        app.update()
        time.sleep(0.01)


def xdotool(*args):
    subprocess.run(["xdotool", *map(str, args)], check=True, timeout=30)


def click(app, widget, x=None, y=None):
    """A real mouse click at (x, y) of the widget (default its centre)."""
    app.update_idletasks()
    x = widget.winfo_width() // 2 if x is None else x
    y = widget.winfo_height() // 2 if y is None else y
    xdotool("mousemove", widget.winfo_rootx() + x, widget.winfo_rooty() + y, "click", 1)
    pump(app)


def typed(app, widget, text):
    click(app, widget)
    xdotool("type", "--delay", 30, "--", text)
    pump(app)


def read_maps(folder):
    return {name: np.asanyarray(nib.load(os.path.join(folder, f)).dataobj) for name, f in MAP_FILES.items()
            if os.path.exists(os.path.join(folder, f))}


def same_args(module, line, argv):
    """The script reads the two command lines alike."""
    parser = module.get_parser()
    ours, theirs = vars(parser.parse_args(shlex.split(line)[1:])), vars(parser.parse_args(argv))
    return ours.keys() == theirs.keys() and all(np.array_equal(ours[k], theirs[k]) for k in ours)


def test_command_line_round_trip(app):
    """A loaded line gives a line the script reads alike (options at their defaults left out),
    and loading that line gives it again."""
    import ivim_fitting
    import ivim_simu_compute_required_snr

    argv = [*FIT_ARGS, "-mo", "one-step", "--bounds-version", "2019", "--engine", "bayes", "--prior", "empirical",
            "--bounds", "f=0:0.3,Dstar=0.005:0.05", "-o", "out", "--bootstrap", "10", "--seed", "3"]
    for frame, module, args in ((app.fit, ivim_fitting, argv), (app.snr, ivim_simu_compute_required_snr, SNR_ARGS)):
        frame.set_from_argv([module.__name__ + ".py", *args])
        line = frame.command_line()
        assert same_args(module, line, args)
        frame.set_from_argv(shlex.split(line))
        assert frame.command_line() == line
    assert app.fit.fields["other"].var.get() == "--seed 3"
    assert app.fit.bound_vars["f"].get() == "0:0.3" and app.fit.bound_vars["Dstar"].get() == "0.005:0.05"
    assert "-mo one-step" not in app.fit.command_line()
    for frame, long_forms, short in ((app.fit, ["--approach", "two-step"], "-mo two-step"),
                                     (app.snr, ["--approach", "two-step", "--ofolder", "elsewhere"],
                                      "-model two-step -ofolder elsewhere")):
        frame.set_from_argv(long_forms)             # the shared long forms fill their fields
        assert short in frame.command_line() and frame.fields["other"].var.get() == ""
    assert app.snr.fields["-ofolder"].var.get() == "elsewhere"
    line = app.fit.command_line()
    app.fit.show_command(line + ' -o "unclosed')               # a pasted line a shell cannot split
    app.fit.load_command()
    assert app.fit.command_line() == line and "No closing quotation" in app.fit.status.cget("text")


def test_preview_of_a_clicked_voxel_is_the_scripts_fit(app, tmp_path):
    """A click on the lowest-b image picks the voxel; its preview (data and fitted curve) is the
    full run's fit of that voxel."""
    fit = app.fit
    fit.set_from_argv([*FIT_ARGS, "-o", "maps"])
    pump(app)                                   # the image shows, at the middle of the mask
    assert fit.slice_shown is not None and int(fit.voxel_vars[2].get()) == 3
    fit.voxel_vars[2].set(str(CORD_VOXEL[2]))
    fit.show_slice()
    pump(app)
    ax = fit.slice_ax
    px, py = ax.transData.transform(CORD_VOXEL[:2])
    widget = fit.canvas.get_tk_widget()
    click(app, widget, int(round(px)), int(round(widget.winfo_height() - py)))
    until(app, lambda: "preview_s" in fit.timings)
    assert fit.voxel() == CORD_VOXEL
    line = fit.curve_ax.get_lines()
    assert np.array_equal(line[0].get_ydata(), nib.load(DWI).get_fdata()[CORD_VOXEL])   # the data drawn
    assert len(line) == 2                                                                  # and the curve
    assert run_script("ivim_fitting.py", *FIT_ARGS, "-o", tmp_path / "cli", "-v", "0").returncode == 0
    maps = read_maps(tmp_path / "cli")
    for name in ("S0", "D", "Fivim", "Dstar"):
        assert np.float32(getattr(fit.preview_fit, name)) == maps[name][CORD_VOXEL], name
    assert float(fit.preview_fit.exception) == 0 and maps["exception"][CORD_VOXEL] == 0


@pytest.mark.slow
def test_run_by_click_gives_the_scripts_maps(app, tmp_path):
    argv = [*FIT_ARGS[:-2], "-o", "maps", *FIT_ARGS[-2:]]           # in the order of the tab's fields
    app.fit.set_from_argv(argv)
    assert app.fit.command_line() == shlex.join(["ivim_fitting.py", *argv])
    click(app, app.fit.buttons["Run"])
    assert app.fit.wait(300), app.fit.status.cget("text")
    assert app.fit.timings["first_progress_s"] <= app.fit.timings["run_s"]
    os.makedirs(tmp_path / "cli")
    assert subprocess.run([sys.executable, os.path.join(REPO, "ivim_fitting.py"), *argv], cwd=tmp_path / "cli",
                          capture_output=True, timeout=300).returncode == 0
    gui_maps, cli_maps = read_maps(tmp_path / "maps"), read_maps(tmp_path / "cli" / "maps")
    assert set(gui_maps) == set(cli_maps) and len(gui_maps) >= 8
    for name in gui_maps:
        assert np.array_equal(gui_maps[name], cli_maps[name], equal_nan=True), name
    commands = [json.load(open(folder / "maps" / FIT_SIDECAR))["command"] for folder in (tmp_path, tmp_path / "cli")]
    assert commands[0] == commands[1] == app.fit.command_line()
    assert "done" in app.fit.status.cget("text")
    click(app, app.fit.buttons["Open viewer"])              # ivim_view_fits.py's window opens and stays
    time.sleep(5)
    assert app.fit.viewer.poll() is None, app.fit.viewer.args
    app.fit.viewer.terminate()
    app.fit.viewer.wait(30)


@pytest.mark.slow
def test_stop_by_click_writes_nothing(app, tmp_path):
    """Stop in the middle of a run (a slow one: bootstrap, small chunks): exit 130, no folder; and
    with --force into a folder of an earlier run: its files as they were."""
    app.fit.set_from_argv([*FIT_ARGS[:-2], "-j", "1", "-o", "maps", "--bootstrap", "500", "--chunk-size", "20"])
    assert app.fit.run()
    until(app, lambda: "first_progress_s" in app.fit.timings)
    assert app.fit.progress.cget("value") < 100
    click(app, app.fit.buttons["Stop"])
    assert not app.fit.wait(60)
    assert app.fit.returncode == 130
    assert "no output written" in app.fit.status.cget("text")
    assert os.listdir(tmp_path) == []
    app.fit.set_from_argv([*FIT_ARGS, "-o", "maps"])          # a finished run, then a stopped --force one
    assert app.fit.run() and app.fit.wait(300)
    before = {name: (tmp_path / "maps" / name).read_bytes() for name in os.listdir(tmp_path / "maps")}
    app.fit.set_from_argv([*FIT_ARGS[:-2], "-j", "1", "-o", "maps", "--bootstrap", "500", "--force",
                           "--chunk-size", "20"])
    assert app.fit.run()
    until(app, lambda: "first_progress_s" in app.fit.timings)
    app.fit.stop()
    assert not app.fit.wait(60) and app.fit.returncode == 130
    assert {name: (tmp_path / "maps" / name).read_bytes() for name in os.listdir(tmp_path / "maps")} == before


def test_bad_value_refused_at_its_field(app, tmp_path):
    """Keys typed into the jobs field: the script's own type gives the message beside it; Run
    (a click) starts nothing."""
    app.fit.set_from_argv([*FIT_ARGS[:-2], "-o", "maps"])
    jobs = app.fit.fields["-j"]
    typed(app, jobs.widget, "0")
    assert jobs.var.get() == "0"
    with pytest.raises(argparse.ArgumentTypeError) as err:
        cli.positive_int("0")
    assert jobs.message.cget("text") == str(err.value) == "must be >= 1, got 0"
    click(app, app.fit.buttons["Run"])
    assert app.fit.proc is None and os.listdir(tmp_path) == []
    assert app.fit.status.cget("text") == "ivim_fitting.py: error: argument -j/--jobs: must be >= 1, got 0"
    typed(app, jobs.widget, "x")
    assert jobs.message.cget("text") == "invalid positive_int value: '0x'"
    draws = app.snr.fields["--n-draws"]
    app.tabs.select(app.snr)
    pump(app)
    draws.var.set("")
    typed(app, draws.widget, "-5")
    assert draws.message.cget("text") == "must be >= 1, got -5"


def script_error(*argv):
    result = run_script("ivim_fitting.py", *argv)
    assert result.returncode == 1
    return result.stderr.strip()


def test_bad_inputs_shown_in_one_line_as_the_script(app, tmp_path):
    bval_short = tmp_path / "short.bval"
    bval_short.write_text("0 10 20 30 40\n")
    other_grid = tmp_path / "mask.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((4, 4, 2), np.int8), np.eye(4)), other_grid)
    asked = []
    app.fit.ask = lambda title, text: asked.append(text) or False
    for argv in (["-i", BVAL, "-b", BVAL], ["-i", DWI, "-b", bval_short], ["-i", DWI, "-b", BVAL, "-ma", other_grid]):
        argv = [*map(str, argv), "-o", str(tmp_path / "maps")]
        app.fit.set_from_argv(argv)
        assert not app.fit.run()
        assert app.fit.status.cget("text") == script_error(*argv)
    assert os.listdir(tmp_path) == ["short.bval", "mask.nii.gz"] or set(os.listdir(tmp_path)) == {"short.bval",
                                                                                                   "mask.nii.gz"}
    os.makedirs(tmp_path / "maps")
    app.fit.set_from_argv([*FIT_ARGS, "-o", str(tmp_path / "maps")])
    assert not app.fit.run() and len(asked) == 1 and "already exists" in asked[0]
    assert app.fit.status.cget("text") == script_error(*FIT_ARGS, "-o", str(tmp_path / "maps"))
    app.fit.ask = lambda title, text: True
    assert app.fit.run()
    assert app.fit.command_line().endswith("--force")
    assert app.fit.wait(300)
    assert os.path.exists(tmp_path / "maps" / FIT_SIDECAR)


@pytest.mark.slow
def test_required_snr_crlb_and_figure(app, tmp_path):
    app.tabs.select(app.snr)
    app.snr.set_from_argv([a for a in SNR_ARGS if a not in ("--method", "crlb")])
    click(app, app.snr.buttons["CRLB answer"])
    assert app.snr.wait(120), app.snr.status.cget("text")
    assert app.snr.command_line() == shlex.join(["ivim_simu_compute_required_snr.py", *SNR_ARGS])
    os.makedirs(tmp_path / "cli")
    assert run_script("ivim_simu_compute_required_snr.py", *SNR_ARGS, cwd=tmp_path / "cli").returncode == 0
    (gui_file,), (cli_file,) = (glob.glob(str(folder / "snr" / "*.npz")) for folder in (tmp_path, tmp_path / "cli"))
    with np.load(gui_file) as gui_arrays, np.load(cli_file) as cli_arrays:
        assert set(gui_arrays.files) == set(cli_arrays.files)
        for name in gui_arrays.files:
            assert np.array_equal(gui_arrays[name], cli_arrays[name]), name
    assert os.path.abspath(app.snr.result_path) == gui_file
    assert sorted(app.snr.figures) == sorted(os.path.basename(gui_file)[:-4] + f"_{n}_D0.png" for n in ("minSNR", "params"))
    assert app.snr.canvas is not None


@pytest.mark.slow
def test_required_snr_monte_carlo_stopped_writes_nothing(app, tmp_path):
    app.snr.set_from_argv(["-model", "one-step", "-ofolder", "snr", "-j", "1", "--n-draws", "2000"])
    assert app.snr.run()
    until(app, lambda: "first_progress_s" in app.snr.timings or app.snr.proc is None, timeout=300)
    app.snr.stop()
    assert not app.snr.wait(60) and app.snr.returncode == 130
    assert not glob.glob(str(tmp_path / "snr" / "*"))
