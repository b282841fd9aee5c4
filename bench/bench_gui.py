"""How quickly ivim_toolbox.py answers (issue 22), and its screenshots for the docs.

On the test data (2523 voxels in the mask), driven by real mouse clicks (xdotool) on the window:
the time from a click on the lowest-b image to the voxel's fit drawn (the first click of the
session loads or compiles the engine; then warm clicks), and from a click on Run to the child
process started (the bar animates), to its first progress line (the bar moves to a fraction)
and to the end; the same command run from a shell is the baseline of the whole run.

    xvfb-run -s "-screen 0 1280x1024x24" python bench/bench_gui.py [--runs 3] [--screenshots docs/img]
"""
import argparse
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from ivim_common import gui  # noqa: E402

FIT = "-i test_data/dwi_rl.nii.gz -b test_data/bval_rl.txt -ma test_data/cord_seg_dilated.nii.gz -o maps -j 2"
CONFIGS = {"fast": "", "fast, --bootstrap 100 --chunk-size 100": "--bootstrap 100 --chunk-size 100"}
SNR = "-F 0.01:6:0.30 -Dstar 3e-3:6:35e-3 -D 0.3e-3,1.5e-3 -model one-step --method crlb -ofolder snr"
VOXELS = [(64, 68, 3), (60, 66, 3), (66, 72, 3), (62, 64, 3), (68, 70, 3)]


def pump(app, until, timeout=600):
    end = time.monotonic() + timeout
    while not until() and time.monotonic() < end:
        app.update()
        time.sleep(0.005)


def click(app, widget, x=None, y=None):
    app.update_idletasks()
    x = widget.winfo_width() // 2 if x is None else x
    y = widget.winfo_height() // 2 if y is None else y
    subprocess.run(["xdotool", "mousemove", str(widget.winfo_rootx() + x),
                    str(widget.winfo_rooty() + y), "click", "1"], check=True)


def click_voxel(app, ijk):
    """Click the voxel on the slice; returns the time clicked to drawn (s)."""
    fit = app.fit
    fit.voxel_vars[2].set(str(ijk[2]))
    fit.show_slice()
    fit.timings.pop("preview_s", None)
    px, py = fit.slice_ax.transData.transform(ijk[:2])
    widget = fit.canvas.get_tk_widget()
    click(app, widget, int(round(px)), int(round(widget.winfo_height() - py)))
    pump(app, lambda: "preview_s" in fit.timings)
    return fit.timings["preview_s"]


def run_by_click(app, argv):
    """Click Run; returns (to the child started, to the first progress line, to the end) in s."""
    fit = app.fit
    fit.set_from_argv(argv)
    fit.fields["--force"].set(True)
    app.update()
    clicked = time.monotonic()
    click(app, fit.buttons["Run"])
    pump(app, lambda: fit.proc is not None)
    assert fit.wait(600), fit.status.cget("text")
    start = fit.timings["start"]
    return start - clicked, start - clicked + fit.timings["first_progress_s"], start - clicked + fit.timings["run_s"]


def shell_run(argv):
    start = time.monotonic()
    subprocess.run([sys.executable, os.path.join(REPO, "ivim_fitting.py"), *argv, "--force"], check=True,
                   capture_output=True)
    return time.monotonic() - start


def screenshot(app, path):
    app.update()
    time.sleep(0.3)
    app.update()
    subprocess.run(["import", "-window", "root", "-crop", f"{app.winfo_width()}x{app.winfo_height()}+0+0",
                    "+repage", "-depth", "8", f"PNG24:{path}"], check=True)
    print(f"wrote {path} ({os.path.getsize(path) // 1024} kB)")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--screenshots", metavar="DIR", help="write gui_fit/preview/done/snr.png there")
    args = parser.parse_args()
    shots = os.path.abspath(args.screenshots) if args.screenshots else None
    os.chdir(tempfile.mkdtemp())
    os.symlink(os.path.join(REPO, "test_data"), "test_data")      # the paths of the README's example
    print(f"load: {os.getloadavg()[0]:.2f} (1 min), {os.cpu_count()} CPUs")
    app = gui.ToolboxApp()
    app.fit.set_from_argv(shlex.split(FIT))
    app.update()
    if shots:
        screenshot(app, f"{shots}/gui_fit.png")
    first = click_voxel(app, VOXELS[0])
    warm = [click_voxel(app, v) for v in VOXELS[1:]]
    print(f"click -> preview drawn: first {1000 * first:.0f} ms (engine loaded or compiled in the GUI's process), "
          f"then median {1000 * statistics.median(warm):.0f} ms [{1000 * min(warm):.0f}, {1000 * max(warm):.0f}] "
          f"over {len(warm)} voxels")
    if shots:
        click_voxel(app, VOXELS[0])
        screenshot(app, f"{shots}/gui_preview.png")
    print("Run clicked -> child started | first progress line | done (median of runs, s); shell: the same "
          "command from a shell; ratio = GUI done / shell")
    for name, extra in CONFIGS.items():
        argv = shlex.split(FIT + " " + extra)
        gui_times = [run_by_click(app, argv) for _ in range(args.runs)]
        shell = statistics.median(shell_run(argv) for _ in range(args.runs))
        started, progress, done = (statistics.median(t) for t in zip(*gui_times))
        print(f"  {name:40s} {started:6.2f} | {progress:6.2f} | {done:6.2f}   shell {shell:6.2f}   "
              f"ratio {done / shell:.2f}")
    if shots:
        screenshot(app, f"{shots}/gui_done.png")
        app.tabs.select(app.snr)
        app.snr.set_from_argv(shlex.split(SNR))
        app.snr.run()
        app.snr.wait(300)
        screenshot(app, f"{shots}/gui_snr.png")
    app.close()


if __name__ == "__main__":
    main()
