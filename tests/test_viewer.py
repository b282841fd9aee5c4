"""ivim_view_fits.py: loading a fit folder, the click-to-fit figure, headless outputs, errors."""
import json
import os

import matplotlib

matplotlib.use("Agg")

import matplotlib.image as mpimg  # noqa: E402
import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from matplotlib.backend_bases import KeyEvent, MouseEvent  # noqa: E402
from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402

import ivim_view_fits  # noqa: E402
from ivim_common import constants, model  # noqa: E402
from ivim_common import viewer as view  # noqa: E402
from ivim_common.constants import CORE_MAPS  # noqa: E402

BVALS = np.array([5, 10, 20, 50, 100, 200, 400, 600, 800], dtype=float)
SHAPE = (6, 5, 3)
OUTSIDE = (0, 0, 1)
FAILED = (2, 3, 0)


@pytest.fixture
def fit_dir(tmp_path):
    """A map folder as ivim_fitting.py writes it, with known parameters and a noisy DWI."""
    rng = np.random.default_rng(0)
    params = {"S0": rng.uniform(300, 600, SHAPE), "D": rng.uniform(0.5e-3, 2e-3, SHAPE),
              "Fivim": rng.uniform(0.05, 0.3, SHAPE), "Dstar": rng.uniform(5e-3, 30e-3, SHAPE)}
    dwi = model.ivim_signal(BVALS, *(params[p] for p in model.PARAM_NAMES))
    dwi *= 1 + 0.02 * rng.standard_normal(dwi.shape)
    mask = np.ones(SHAPE, dtype=np.int8)
    mask[OUTSIDE] = 0
    maps = dict(params, FivimXDstar=params["Fivim"] * params["Dstar"],
                AIC=rng.uniform(20, 60, SHAPE), R2=rng.uniform(0.8, 1, SHAPE),
                exception=np.zeros(SHAPE), ADC=rng.uniform(0.5e-3, 2e-3, SHAPE),
                AICc=rng.uniform(20, 60, SHAPE), AICc_mono=rng.uniform(20, 60, SHAPE),
                RMSE=rng.uniform(1, 10, SHAPE), bounds_hit=np.where(rng.random(SHAPE) < 0.5, 0.0, 80.0),
                **{f"{p}_sd": 0.1 * params[p] for p in model.PARAM_NAMES})
    maps["model_choice"] = (maps["AICc"] < maps["AICc_mono"]).astype(float)
    for name in maps:
        maps[name][OUTSIDE] = 0
        maps[name][FAILED] = np.nan
    maps["exception"][FAILED] = 1
    affine = np.diag([0.8, 0.8, 5.0, 1.0])
    folder = tmp_path / "params_map"
    folder.mkdir()
    inputs = {}
    for key, data in (("dwi", dwi), ("mask", mask)):
        path = tmp_path / f"{key}.nii.gz"
        nib.save(nib.Nifti1Image(data.astype(np.float32), affine), path)
        inputs[key] = {"path": path.name, "abspath": str(path), "sha256": "not checked"}
    files = {name: f"{name}_map.nii.gz" for name in [*CORE_MAPS, *(f"{p}_sd" for p in model.PARAM_NAMES)]}
    for name, filename in files.items():
        nib.save(nib.Nifti1Image(maps[name].astype(np.float32), affine), folder / filename)
    sidecar = {"tool": "ivim_fitting.py", "inputs": inputs, "bvals": BVALS.tolist(),
               "approach": "one-step", "engine": "fast", "maps": files}
    (folder / constants.FIT_SIDECAR).write_text(json.dumps(sidecar))
    return folder


def click(viewer, x, y):
    """Left-click voxel (x, y) of the map as a user would: through the canvas callbacks."""
    px, py = viewer.ax_map.transData.transform((x, y))
    event = MouseEvent("button_press_event", viewer.fig.canvas, px, py, button=1)
    viewer.fig.canvas.callbacks.process("button_press_event", event)


def make_viewer(folder, **kwargs):
    viewer = view.FitViewer(folder, **kwargs)
    FigureCanvasAgg(viewer.fig)
    viewer.fig.canvas.draw()
    return viewer


def test_load_fit_folder_finds_everything_through_the_sidecar(fit_dir):
    folder = view.load_fit_folder(str(fit_dir / "Fivim_map.nii.gz"))
    assert folder.name == "Fivim"
    assert list(folder.maps) == list(CORE_MAPS) + [f"{p}_sd" for p in model.PARAM_NAMES]
    assert folder.dwi.shape == SHAPE + (len(BVALS),)
    np.testing.assert_array_equal(folder.bvals, BVALS)
    assert folder.mask.sum() == np.prod(SHAPE) - 1
    assert folder.zooms == pytest.approx((0.8, 0.8, 5.0))
    assert [folder.status(v) for v in (OUTSIDE, FAILED, (1, 1, 1))] == \
        ["outside mask", "failed", "fitted"]
    assert folder.notes == []
    comma_bvals = fit_dir.parent / "bvals.txt"
    comma_bvals.write_text(",".join(f"{b:g}" for b in BVALS) + "\n")
    np.testing.assert_array_equal(
        view.load_fit_folder(str(fit_dir / "D_map.nii.gz"), bvals=str(comma_bvals)).bvals, BVALS)


def test_click_plots_the_voxel_signal_and_the_model_at_its_parameters(fit_dir):
    folder = view.load_fit_folder(str(fit_dir / "Fivim_map.nii.gz"))
    reports = []
    viewer = make_viewer(folder, report=reports.append)
    viewer.on_key(KeyEvent("key_press_event", viewer.fig.canvas, key="down"))
    z = viewer.z
    click(viewer, 4, 2)
    ijk = (4, 2, z)
    assert viewer.voxel == ijk
    measured = viewer.lines["measured"]
    np.testing.assert_array_equal(measured.get_xdata(), BVALS)
    assert np.allclose(measured.get_ydata(), folder.dwi[ijk])
    params = [folder.maps[p][ijk] for p in model.PARAM_NAMES]
    b = viewer.lines["fit"].get_xdata()
    assert b[0] == 0 and b[-1] >= BVALS.max()
    curve = model.ivim_signal(b, *params)
    assert np.allclose(viewer.lines["fit"].get_ydata(), curve)
    s0, d, f, dstar = params
    assert np.allclose(viewer.lines["tissue"].get_ydata(), s0 * (1 - f) * np.exp(-b * d))
    assert np.allclose(viewer.lines["perfusion"].get_ydata(), s0 * f * np.exp(-b * (d + dstar)))
    # The log panel shows the same curves.
    log_lines = viewer.ax_log.get_lines()
    assert viewer.ax_log.get_yscale() == "log" and len(log_lines) == 4
    assert np.allclose(log_lines[1].get_ydata(), curve)
    text = viewer.ax_text.texts[0].get_text()
    d_sd = folder.maps["D_sd"][ijk]
    assert text.startswith("status: fitted\n") and f"D     = {d:.3e} ± {d_sd:.1e} mm²/s" in text
    assert len(reports) == 1 and reports[0].startswith(f"voxel (x, y, z) = {ijk} [fitted]")
    assert f"Fivim={f:.4g}" in reports[0]


def test_outside_mask_and_failed_voxels_are_reported_not_fitted(fit_dir):
    viewer = make_viewer(view.load_fit_folder(str(fit_dir / "D_map.nii.gz")))
    for ijk, message in ((OUTSIDE, "status: outside the mask"), (FAILED, "status: fit failed")):
        viewer.select(*ijk)
        assert "fit" not in viewer.lines and "measured" in viewer.lines
        assert viewer.ax_text.texts[0].get_text().startswith(message)
        assert viewer.z == ijk[2]
        # The map is blank there (and only there, on this slice).
        blank = np.ma.getmaskarray(viewer.image.get_array())
        assert np.array_equal(np.argwhere(blank), [[ijk[1], ijk[0]]])


def test_map_only_view_without_dwi_still_draws_the_fitted_curve(fit_dir):
    (fit_dir.parent / "dwi.nii.gz").unlink()
    folder = view.load_fit_folder(str(fit_dir / "R2_map.nii.gz"))
    assert folder.dwi is None and "dwi" in folder.notes[0] and "not found" in folder.notes[0]
    viewer = make_viewer(folder)
    viewer.select(1, 1, 1)
    assert "measured" not in viewer.lines and "fit" in viewer.lines
    assert "no DWI" in viewer.ax_text.texts[0].get_text()


def test_voxel_save_and_montage_write_images(fit_dir, tmp_path, capsys, monkeypatch):
    fig_png, page_png = tmp_path / "voxel.png", tmp_path / "maps.png"
    argv = ["-i", str(fit_dir / "Fivim_map.nii.gz"), "--voxel", "3,2,1", "--save", str(fig_png),
            "--montage", str(page_png), "-param", "cmap=jet,clim=0;0.3", "-plotdir", "ignored"]
    viewers = []

    class RecordedViewer(view.FitViewer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            viewers.append(self)

    monkeypatch.setattr(view, "FitViewer", RecordedViewer)
    assert ivim_view_fits.main(argv) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("voxel (x, y, z) = (3, 2, 1) [fitted]")
    assert out[-1] == f"wrote {fig_png}, {page_png}"
    assert viewers[0].ax_map.get_title() == "slice z = 1 of 0-2"  # no mouse and key hints on a saved figure
    for path in (fig_png, page_png):
        image = mpimg.imread(path)
        assert min(image.shape[:2]) > 400 and image[..., :3].std() > 0.05
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dwi.nii.gz", "maps.png", "mask.nii.gz",
                                                         "params_map", "voxel.png"]


def test_interactive_window_opens_on_the_given_voxel(fit_dir, monkeypatch, capsys):
    import matplotlib.pyplot as plt

    shown = []
    monkeypatch.setattr(ivim_view_fits, "NON_INTERACTIVE_BACKENDS", ())
    monkeypatch.setattr(plt, "show", lambda: shown.append(plt.gcf()))
    assert ivim_view_fits.main(["-i", str(fit_dir / "Dstar_map.nii.gz"), "--voxel", "1,2,0"]) == 0
    (fig,) = shown
    assert capsys.readouterr().out.startswith("voxel (x, y, z) = (1, 2, 0) [fitted]")
    measured = [line for line in fig.axes[1].get_lines() if line.get_label() == "measured signal"]
    dwi = nib.load(fit_dir.parent / "dwi.nii.gz").get_fdata()
    assert np.allclose(measured[0].get_ydata(), dwi[1, 2, 0])
    plt.close(fig)


def test_headless_outputs_on_test_data(tmp_path, capsys):
    """The original's maps (no sidecar) with the DWI, b-values and mask named on the command line."""
    data = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "test_data")
    maps = os.path.join(data, "results_you_should_get", "ivim_maps_rl")
    argv = ["-i", os.path.join(maps, "Dstar_map.nii.gz"),
            "-dwi", os.path.join(data, "dwi_rl.nii.gz"), "-b", os.path.join(data, "bval_rl.txt"),
            "-ma", os.path.join(data, "cord_seg_dilated.nii.gz"),
            "--voxel", "64,64,2", "--save", str(tmp_path / "v.png"), "--montage", str(tmp_path / "m.png")]
    assert ivim_view_fits.main(argv) == 0
    out = capsys.readouterr().out
    f = nib.load(os.path.join(maps, "Fivim_map.nii.gz")).get_fdata()[64, 64, 2]
    assert out.startswith("voxel (x, y, z) = (64, 64, 2) [fitted]") and f"Fivim={f:.4g}" in out
    for name in ("v.png", "m.png"):
        image = mpimg.imread(tmp_path / name)
        assert min(image.shape[:2]) > 600 and image[..., :3].std() > 0.05


@pytest.mark.parametrize("extra, message", [
    (["-i", "missing_map.nii.gz"], "missing_map.nii.gz: no such file"),
    (["--voxel", "6,0,0", "--save", "{tmp}/v.png"], "voxel (6, 0, 0) outside the image"),
    (["-b", "{tmp}/bvals.txt", "--montage", "{tmp}/m.png"], "9 volumes but 3 b-values"),
    (["--montage", "{tmp}/exists.png"], "already exists (use --force"),
    (["--montage", "{tmp}/exists.png/m.png"], "exists.png exists and is not a folder"),
    (["--voxel", "1,1,1", "--save", "{tmp}/m.png", "--montage", "{tmp}/m.png"], "m.png: given twice"),
    (["-dwi", "{tmp}/moved_dwi.nii.gz", "--montage", "{tmp}/m.png"],
     "moved_dwi.nii.gz: affine (voxel-to-world matrix) differs from the map's"),
    (["-ma", "{tmp}/moved_mask.nii.gz", "--montage", "{tmp}/m.png"],
     "moved_mask.nii.gz: affine (voxel-to-world matrix) differs from the map's"),
    ([], "no display for the interactive window"),
])
def test_bad_inputs_exit_1_with_one_line(fit_dir, tmp_path, capsys, extra, message):
    (tmp_path / "bvals.txt").write_text("0 500 1000\n")
    (tmp_path / "exists.png").write_bytes(b"")
    moved = np.diag([0.8, 0.8, 5.0, 1.0]) + np.eye(4, k=3)  # the fixture's affine, shifted 1 mm in x
    nib.save(nib.Nifti1Image(np.ones(SHAPE + (len(BVALS),), np.float32), moved), tmp_path / "moved_dwi.nii.gz")
    nib.save(nib.Nifti1Image(np.ones(SHAPE, np.int8), moved), tmp_path / "moved_mask.nii.gz")
    argv = ["-i", str(fit_dir / "Fivim_map.nii.gz")] + [a.format(tmp=tmp_path) for a in extra]
    assert ivim_view_fits.main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("ivim_view_fits.py: error: ") and message in err[0]
    assert not (tmp_path / "m.png").exists() and not (tmp_path / "v.png").exists()


@pytest.mark.parametrize("argv", [[], ["-i", "m.nii.gz", "--save", "f.png"],
                                  ["-i", "m.nii.gz", "--voxel", "1,2"],
                                  ["-i", "m.nii.gz", "-param", "clim=0.3"],
                                  ["-i", "m.nii.gz", "-param", "cmap=nosuchmap"]])
def test_usage_errors_exit_2(argv):
    with pytest.raises(SystemExit) as exc:
        ivim_view_fits.main(argv)
    assert exc.value.code == 2


def test_display_param_and_defaults():
    assert ivim_view_fits.display_param("cmap=jet,clim=0;0.3") == {"cmap": "jet", "clim": (0, 0.3)}
    data = np.arange(101.0).reshape(101, 1, 1)
    assert view.map_display("Fivim", data) == ("f (fraction)", "viridis", (0.0, 0.35))
    assert view.map_display("S0", data)[2] == pytest.approx((1.0, 99.0))
    assert view.map_display("D", data, cmap="jet", clim=(0, 1))[1:] == ("jet", (0, 1))


def test_montage_has_every_slice_of_every_map_and_param_applies_to_the_opened_map(fit_dir):
    folder = view.load_fit_folder(str(fit_dir / "Fivim_map.nii.gz"))
    fig = view.montage_figure(folder, cmap="jet", clim=(0.0, 0.3))
    images = [ax.images[0] for ax in fig.axes if ax.images]
    assert len(images) == (len(CORE_MAPS) + 4) * SHAPE[2]           # and the 4 SD maps
    by_map = dict(zip(folder.maps, images[::SHAPE[2]]))
    assert by_map["Fivim"].get_cmap().name == "jet" and by_map["Fivim"].get_clim() == (0.0, 0.3)
    assert by_map["D"].get_cmap().name == "viridis" and by_map["D"].get_clim() == (0.0, 3e-3)
    shown, inside = images[SHAPE[2] + 1].get_array(), folder.mask[:, :, 1].T  # D, slice 1
    assert np.array_equal(np.ma.getmaskarray(shown), ~inside)
    assert np.allclose(shown.compressed(), folder.maps["D"][:, :, 1].T[inside])


def test_panel_shows_uncertainty_model_choice_rmse_and_bounds_in_words(fit_dir):
    folder = view.load_fit_folder(str(fit_dir / "Fivim_map.nii.gz"))
    viewer = make_viewer(folder)
    ijk = next(v for v in zip(*np.nonzero(folder.maps["bounds_hit"] == 80)) if folder.status(v) == "fitted")
    viewer.select(*(int(i) for i in ijk))
    text = viewer.ax_text.texts[0].get_text()
    values = folder.values(ijk)
    assert f"f     = {values['Fivim']:.3f} ± {values['Fivim_sd']:.2g}" in text
    assert "SD of" not in text                                  # the SDs sit beside their parameter
    choice = "IVIM" if values["AICc"] < values["AICc_mono"] else "mono-exponential"
    assert (f"model: {choice}\n  AICc IVIM {values['AICc']:.4g}, mono {values['AICc_mono']:.4g}" in text)
    assert f"RMSE  = {values['RMSE']:.4g}" in text
    assert "bounds: f at lower, D* at lower" in text            # 80 = 16 + 64
    assert view.bound_words(0.0) == "none" and view.bound_words(float("nan")) == "n/a"
    assert view.bound_words(2 + 8 + 32 + 128) == "S0 at upper, D at upper, f at upper, D* at upper"
