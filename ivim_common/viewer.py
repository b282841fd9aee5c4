"""The interactive viewer of fitted maps (ivim_view_fits.py) and its montage of every map.

:func:`load_fit_folder` gathers a map, the maps beside it and the data behind them into a
:class:`FitFolder`; :class:`FitViewer` draws a slice and, for a clicked voxel, its signal and
fitted curve; :func:`montage_figure` puts every slice of every map on one page.  Figures are
built without pyplot, so everything works headless; labels, units, colour maps and default
ranges come from the parameter table (:data:`ivim_common.constants.PARAMETERS`).
"""
import dataclasses
import functools
import os

import numpy as np
from matplotlib.figure import Figure

from . import model
from .io.bids import bids_fit_sidecar
from .io.inputs import load_on_grid, read_bvals
from .io.results import read_sidecar
from .constants import BOUND_BITS, CORE_MAPS, FIT_SIDECAR, MAP_FILES, UNCERTAINTY, parameters
from .errors import InputError


@dataclasses.dataclass
class FitFolder:
    """Maps of one fit and, where found, the data they were fitted to.

    Attributes
    ----------
    name : str
        Name of the map the user opened (a key of ``maps``), e.g. 'Fivim'.
    path : str
        Path of that map.
    maps : dict of str -> ndarray, shape (nx, ny, nz)
        Every map found (float64; D, Dstar, FivimXDstar in mm²/s).
    zooms : tuple of float
        Voxel size (mm) along x, y, z.
    bvals : ndarray, shape (n_b,), or None
        b-values in s/mm².
    dwi : ndarray, shape (nx, ny, nz, n_b), or None
        Measured signal (None: map-only view).
    mask : ndarray of bool, shape (nx, ny, nz), or None
    sidecar : dict or None
        Contents of ivim_fitting.json.
    notes : list of str
        Things the user should know (inputs named by the sidecar but not found).
    """
    name: str
    path: str
    maps: dict
    zooms: tuple
    bvals: np.ndarray = None
    dwi: np.ndarray = None
    mask: np.ndarray = None
    sidecar: dict = None
    notes: list = dataclasses.field(default_factory=list)

    @property
    def shape(self):
        return self.maps[self.name].shape

    @property
    def dstar_convention(self):
        """What the Dstar map holds, as its sidecar says ('toolbox' without one)."""
        return (self.sidecar or {}).get("dstar_convention") or "toolbox"

    def has_model(self):
        """True when the four model parameter maps are all present."""
        return all(p in self.maps for p in model.PARAM_NAMES)

    @functools.cached_property
    def fit(self):
        """The maps as an :class:`ivim_common.api.IvimFit` (for its curves); needs has_model()."""
        from .api import IvimFit

        maps = {name: np.full(self.shape, np.nan) for name in CORE_MAPS}
        maps.update(self.maps)
        return IvimFit(None, maps, self.region, sidecar=self.sidecar)

    def values(self, ijk):
        """Value of every map at voxel ``ijk`` (0-based x, y, z)."""
        return {name: float(data[ijk]) for name, data in self.maps.items()}

    def signal(self, ijk):
        """Measured signal at voxel ``ijk``, shape (n_b,), or None without a DWI."""
        return None if self.dwi is None else self.dwi[ijk]

    @property
    def region(self):
        """Voxels that were fitted: the mask, else where a parameter map is not 0.

        ivim_fitting.py writes 0 outside the mask and NaN where a fit failed.
        """
        if self.mask is not None:
            return self.mask
        names = [p for p in model.PARAM_NAMES if p in self.maps] or [self.name]
        return np.any([self.maps[n] != 0 for n in names], axis=0)

    def status(self, ijk):
        """'fitted', 'outside mask' or 'failed' for voxel ``ijk``."""
        if not self.region[ijk]:
            return "outside mask"
        values = self.values(ijk)       # an SD map is NaN where its parameter is at a bound: not a failure
        if values.get("exception", 0) >= 0.5 or any(np.isnan(values[p]) for p in model.PARAM_NAMES if p in values):
            return "failed"
        return "fitted"


def load_fit_folder(map_path, dwi=None, bvals=None, mask=None, maps_dir=None):
    """Load a map, the other maps beside it and the inputs named by its sidecar.

    The sidecar ``ivim_fitting.json`` in the map's folder (for a BEP016 map, the fit's sidecar
    beside it: :func:`ivim_common.io.bids_fit_sidecar`) names the other maps, the DWI, the
    mask and holds the b-values.  Each argument given here overrides what the sidecar says.

    Parameters
    ----------
    map_path : str
        A map written by ivim_fitting.py (e.g. params_map/Fivim_map.nii.gz).
    dwi, bvals, mask : str, optional
        Paths of the 4-D DWI, the b-value text file (s/mm²) and the mask.
    maps_dir : str, optional
        Folder of the other maps (default: the map's folder).

    Returns
    -------
    FitFolder

    Raises
    ------
    InputError
        A file given here or a map is missing or unreadable, or the images do not match.
    """
    folder = os.path.dirname(os.path.abspath(map_path))
    sidecar = read_sidecar(bids_fit_sidecar(map_path) or os.path.join(folder, FIT_SIDECAR))
    image, data = load_on_grid(map_path, "map", 3)
    map_files = (sidecar or {}).get("maps") or MAP_FILES
    name = _map_name(map_path, map_files)
    paths = {n: os.path.join(maps_dir or folder, f) for n, f in map_files.items()}
    paths[name] = map_path  # the opened map, wherever the others are
    maps = {n: data if n == name else load_on_grid(p, f"{n} map", 3, image)[1]
            for n, p in paths.items() if n == name or os.path.isfile(p)}
    out = FitFolder(name=name, path=map_path, maps=maps, sidecar=sidecar,
                    zooms=tuple(float(z) for z in image.header.get_zooms()[:3]))

    dwi_path = dwi or _sidecar_input(sidecar, "dwi", out.notes)
    mask_path = mask or _sidecar_input(sidecar, "mask", out.notes)
    if bvals:
        out.bvals = read_bvals(bvals)
    elif sidecar and sidecar.get("bvals"):
        out.bvals = np.asarray(sidecar["bvals"], dtype=float)
    if dwi_path:
        if out.bvals is None:
            raise InputError(f"DWI {dwi_path}: no b-values for it (no {FIT_SIDECAR} in {folder}; "
                             "give the b-value file)")
        out.dwi = load_on_grid(dwi_path, "DWI", 4, image)[1]
        if out.dwi.shape[3] != len(out.bvals):
            raise InputError(f"DWI {dwi_path}: {out.dwi.shape[3]} volumes but {len(out.bvals)} "
                             f"b-values (from {bvals or FIT_SIDECAR})")
    if mask_path:
        out.mask = load_on_grid(mask_path, "mask", 3, image)[1] > 0
    return out


def _map_name(map_path, map_files):
    """The map's name: its key in the sidecar, else the file name without '_map.nii[.gz]'."""
    filename = os.path.basename(map_path)
    for name, other in map_files.items():
        if other == filename:
            return name
    for suffix in (".gz", ".nii", "_map"):
        filename = filename.removesuffix(suffix)
    return filename


def _sidecar_input(sidecar, key, notes):
    """Path of an input named by the sidecar, if it still exists (else a note, and None)."""
    entry = ((sidecar or {}).get("inputs") or {}).get(key)
    if not entry:
        return None
    for path in (entry.get("abspath"), entry.get("path")):
        if path and os.path.isfile(path):
            return path
    notes.append(f"{key} {entry.get('abspath') or entry.get('path')} (named in {FIT_SIDECAR}) "
                 "not found")
    return None


STATUS_TEXT = {"fitted": "status: fitted", "outside mask": "status: outside the mask\n(not fitted)",
               "failed": "status: fit failed\n(exception = 1)"}
OUTSIDE_COLOR = "white"  # behind voxels outside the fitted region and failed (NaN) voxels


def map_display(name, data, region=None, cmap=None, clim=None, dstar_convention="toolbox"):
    """Colour-bar label, colour map and limits of a map (defaults from the parameter table, as
    the maps of ``dstar_convention`` hold them: 'osipi' labels Dstar D*p = D + D*).

    Maps without default limits (S0, AIC, others) get the 1st-99th percentiles of their finite
    values in ``region`` (boolean, like ``data``; default all voxels).
    """
    p = parameters(dstar_convention).get(name)
    label, default_cmap, default_clim = (p.axis, p.cmap, p.display) if p else (name, "viridis", None)
    if clim is None:
        clim = default_clim
    if clim is None:
        values = data[region] if region is not None else data
        values = values[np.isfinite(values)]
        clim = tuple(np.percentile(values, [1, 99])) if values.size else (0.0, 1.0)
    return label, cmap or default_cmap, clim


def view_box(folder, margin=0.3):
    """(x0, x1, y0, y1) display limits: the fitted region's bounding box plus a margin."""
    nx, ny = folder.shape[:2]
    if not folder.region.any():
        return -0.5, nx - 0.5, -0.5, ny - 0.5
    xs, ys = np.nonzero(folder.region.any(axis=2))
    pad = max(5, int(margin * max(np.ptp(xs), np.ptp(ys))))
    return (max(xs.min() - pad, 0) - 0.5, min(xs.max() + pad, nx - 1) + 0.5,
            max(ys.min() - pad, 0) - 0.5, min(ys.max() + pad, ny - 1) + 0.5)


def _axial_slice(data, region, z):
    """Slice z of a map, transposed for display, blank outside the fitted region."""
    return np.ma.masked_where(~region[:, :, z].T, data[:, :, z].T)


def _show_slice(ax, image, zooms, cmap, clim):
    """An axial slice with x to the right and y up (voxel centres at integer coordinates)."""
    ax.set_facecolor(OUTSIDE_COLOR)
    return ax.imshow(image, origin="lower", cmap=cmap, vmin=clim[0], vmax=clim[1],
                     interpolation="nearest", aspect=zooms[1] / zooms[0])


class FitViewer:
    """One figure: a slice of a map and, for the selected voxel, its signal and fitted curve.

    Click a voxel (left button) to select it; up/down arrow keys or the scroll wheel change
    the slice.  :meth:`on_click`, :meth:`on_key` and :meth:`on_scroll` are connected to the
    figure's canvas; :meth:`select` does the work and can be called directly.

    Parameters
    ----------
    folder : FitFolder
    cmap, clim : optional
        Colour map and (min, max) of the displayed map (defaults: :func:`map_display`).
    fig : matplotlib.figure.Figure, optional
        Figure to draw into (e.g. one from pyplot for a window); default a new Figure.
    report : callable, optional
        Called with a one-line description of each selected voxel (e.g. print).
    interactive : bool
        Show how to use the mouse and keys in the titles (False for a saved figure).
    """

    def __init__(self, folder, cmap=None, clim=None, fig=None, report=None, interactive=True):
        self.folder = folder
        self.report = report
        self.interactive = interactive
        self.fig = fig if fig is not None else Figure()
        self.fig.set_size_inches(14, 6.5)
        self.fig.set_layout_engine("constrained")
        grid = self.fig.add_gridspec(2, 3, width_ratios=[1.1, 1, 0.6])
        self.ax_map = self.fig.add_subplot(grid[:, 0])
        self.ax_lin = self.fig.add_subplot(grid[0, 1])
        self.ax_log = self.fig.add_subplot(grid[1, 1])
        self.ax_text = self.fig.add_subplot(grid[:, 2])
        self.ax_text.set_axis_off()

        data = folder.maps[folder.name]
        label, self.cmap, self.clim = map_display(folder.name, data, folder.region, cmap, clim,
                                                  folder.dstar_convention)
        self.z = int(np.argmax(folder.region.sum(axis=(0, 1))))  # the slice with most fitted voxels
        self.image = _show_slice(self.ax_map, _axial_slice(data, folder.region, self.z),
                                 folder.zooms, self.cmap, self.clim)
        self.fig.colorbar(self.image, ax=self.ax_map, shrink=0.8, label=label)
        x0, x1, y0, y1 = view_box(folder)
        self.ax_map.set(xlim=(x0, x1), ylim=(y0, y1), xlabel="x (voxel)", ylabel="y (voxel)")
        (self.marker,) = self.ax_map.plot([], [], "+", color="red", ms=14, mew=2)
        self.voxel = None
        self.lines = {}
        self._set_map_title()
        self._draw_voxel()

        title = os.path.join(*os.path.abspath(folder.path).split(os.sep)[-2:])
        if folder.sidecar:
            title += (f" — {folder.sidecar.get('approach', '?')} fit, "
                      f"{folder.sidecar.get('engine', '?')} engine")
            title += ", D*p = D + D* (OSIPI convention)" if folder.dstar_convention == "osipi" else ""
        self.fig.suptitle(title)
        self.fig.canvas.mpl_connect("button_press_event", self.on_click)
        self.fig.canvas.mpl_connect("key_press_event", self.on_key)
        self.fig.canvas.mpl_connect("scroll_event", self.on_scroll)

    @property
    def shape(self):
        return self.folder.shape

    def on_click(self, event):
        """Left click on the map: select the voxel under the pointer."""
        toolbar = getattr(self.fig.canvas, "toolbar", None)
        if event.button != 1 or event.inaxes is not self.ax_map or (toolbar and toolbar.mode):
            return
        x, y = int(round(event.xdata)), int(round(event.ydata))
        if 0 <= x < self.shape[0] and 0 <= y < self.shape[1]:
            self.select(x, y, self.z)

    def on_key(self, event):
        """Up/down arrow (or page up/down): next/previous slice."""
        step = {"up": 1, "pageup": 1, "down": -1, "pagedown": -1}.get(event.key)
        if step:
            self.set_slice(self.z + step)

    def on_scroll(self, event):
        """Scroll over the map: next/previous slice."""
        if event.inaxes is self.ax_map:
            self.set_slice(self.z + (1 if event.button == "up" else -1))

    def set_slice(self, z):
        """Show slice z (clipped to the volume)."""
        self.z = int(np.clip(z, 0, self.shape[2] - 1))
        self.image.set_data(_axial_slice(self.folder.maps[self.folder.name], self.folder.region,
                                         self.z))
        on_slice = self.voxel is not None and self.voxel[2] == self.z
        self.marker.set_visible(on_slice)
        self._set_map_title()
        self.fig.canvas.draw_idle()

    def select(self, x, y, z):
        """Select voxel (x, y, z) (0-based): show its slice, signal, fit and values.

        Returns
        -------
        str
            One line: the voxel, its status and the values of every map.
        """
        self.voxel = (x, y, z)
        self.marker.set_data([x], [y])
        self.set_slice(z)
        self._draw_voxel()
        values = self.folder.values(self.voxel)
        line = (f"voxel (x, y, z) = ({x}, {y}, {z}) [{self.folder.status(self.voxel)}]: "
                + " ".join(f"{name}={value:.4g}" for name, value in values.items()))
        if self.report:
            self.report(line)
        self.fig.canvas.draw_idle()
        return line

    def _set_map_title(self):
        hint = " (↑/↓ or scroll: slice; click: voxel)" if self.interactive else ""
        self.ax_map.set_title(f"slice z = {self.z} of 0-{self.shape[2] - 1}{hint}", fontsize=10)

    def _draw_voxel(self):
        """Redraw the signal panels and the values of the selected voxel."""
        for ax in (self.ax_lin, self.ax_log, self.ax_text):
            ax.cla()
        self.ax_text.set_axis_off()
        self.lines = {}
        folder, ijk = self.folder, self.voxel
        for ax, scale in ((self.ax_lin, "linear"), (self.ax_log, "log")):
            ax.set(yscale=scale, xlabel="b (s/mm²)",
                   ylabel="signal (DWI units" + (", log scale)" if scale == "log" else ")"))
            ax.grid(True, which="both", alpha=0.3)
        if ijk is None:
            self.ax_lin.set_title("click a voxel of the map", fontsize=10)
            return
        status = folder.status(ijk)
        signal = folder.signal(ijk)
        self.ax_lin.set_title(f"voxel (x, y, z) = {ijk}", fontsize=10)
        notes = []
        if signal is not None:
            self._plot("measured", folder.bvals, signal, "o", color="black", ms=5,
                       label="measured signal")
        else:
            notes.append("no DWI: signal not shown\n(give -dwi and -b)")
        if status == "fitted" and folder.has_model() and folder.bvals is not None:
            self._plot_model(folder.values(ijk))
        if not folder.has_model():
            notes.append("S0, D, Fivim and Dstar maps not all found:\nno fitted curve")
        self._write_values(status, notes)
        if self.lines:
            self.ax_text.legend(*self.ax_lin.get_legend_handles_labels(), loc="upper left",
                                frameon=False)
            self._limit_log_axis()

    def _plot(self, key, b, s, *style, **kwargs):
        """Plot one curve on both signal panels; keep the linear one in self.lines."""
        self.lines[key] = self.ax_lin.plot(b, s, *style, **kwargs)[0]
        self.ax_log.plot(b, np.where(s > 0, s, np.nan), *style, **kwargs)

    def _plot_model(self, values):
        s0, d, f, dstar = (values[p] for p in model.PARAM_NAMES)
        dstar = model.excess_dstar(dstar, d, self.folder.dstar_convention)
        b = np.linspace(0.0, 1.05 * np.max(self.folder.bvals), 200)
        self._plot("fit", b, self.folder.fit[self.voxel].predict(b), "-", color="tab:red", lw=2,
                   label="fit = tissue + perfusion")
        # Each compartment is the model with f = 0 or f = 1, weighted by its fraction.
        self._plot("tissue", b, model.ivim_signal(b, s0 * (1 - f), d, 0.0, dstar), "--",
                   color="tab:blue", label=r"tissue $S_0(1-f)\,e^{-bD}$")
        self._plot("perfusion", b, model.ivim_signal(b, s0 * f, d, 1.0, dstar), ":",
                   color="tab:green", lw=2, label=r"perfusion $S_0\,f\,e^{-b(D+D^*)}$")

    def _limit_log_axis(self):
        """Log panel: down to 1/10 of the lowest measured or fitted signal, not to the
        vanishing tail of the perfusion compartment."""
        lows = [np.nanmin(self.lines[k].get_ydata()) for k in ("measured", "fit")
                if k in self.lines]
        lows = [v for v in lows if v > 0]
        if lows:
            self.ax_log.set_ylim(bottom=min(lows) / 10)

    def _write_values(self, status, notes):
        values = self.folder.values(self.voxel)
        criterion = ((self.folder.sidecar or {}).get("model_choice") or {}).get("criterion", "aicc")
        table = parameters(self.folder.dstar_convention)
        rows = [_value_row(name, p, values) for name, p in table.items()
                if name in values and name not in PANEL_ELSEWHERE]
        text = "\n".join([STATUS_TEXT[status], ""] + rows + [""] + trust_lines(values, criterion)
                         + [""] + notes)
        self.ax_text.text(0.0, 0.76, text, va="top", family="monospace", fontsize=8.5,
                          transform=self.ax_text.transAxes)


# Maps the panel shows beside others (uncertainties with their parameter) or in words.
PANEL_ELSEWHERE = {f"{p}_{kind}" for p in model.PARAM_NAMES for kind in UNCERTAINTY} | {
    "exception", "AICc", "AICc_mono", "model_choice", "RMSE", "bounds_hit"}


def _value_row(name, p, values):
    """'f     = 0.123 ± 0.012' (and the 95 % interval below, where there is one)."""
    row = f"{p.label:<5} = {values[name]:{p.fmt}}"
    sd, low, high = (values.get(f"{name}_{kind}") for kind in UNCERTAINTY)
    if sd is not None:
        sd_fmt = ".1e" if p.fmt.endswith("e") else ".2g"
        row += f" ± {sd:{sd_fmt}}" if np.isfinite(sd) else " ± n/a"
    row += f" {p.short_unit}".rstrip()
    if low is not None and np.isfinite(low) and np.isfinite(high):
        row += f"\n{'':8}95 %: [{low:{p.fmt}}, {high:{p.fmt}}]"
    return row


def bound_words(flags):
    """The bits of a bounds_hit value in words, e.g. 'f at lower, D* at upper' ('none')."""
    if flags is None or not np.isfinite(flags):
        return "n/a"
    hit = [f"{parameters()[name].label} at {side}" for bit, name, side in BOUND_BITS if int(flags) & bit]
    return ", ".join(hit) or "none"


def trust_lines(values, criterion="aicc"):
    """The panel's lines on how far to trust the voxel: model choice, RMSE, bounds (where the
    maps are there; a folder of the original toolbox has none)."""
    lines = []
    choice = values.get("model_choice")
    if choice is not None and np.isfinite(choice):
        by = "" if criterion == "aicc" else f" (by {criterion.upper()})"
        lines += [f"model: {'IVIM' if choice >= 0.5 else 'mono-exponential'}{by}",
                  f"  AICc IVIM {values.get('AICc', np.nan):.4g}, mono {values.get('AICc_mono', np.nan):.4g}"]
    if "RMSE" in values:
        lines.append(f"RMSE  = {values['RMSE']:.4g}")
    if "bounds_hit" in values:
        lines.append(f"bounds: {bound_words(values['bounds_hit'])}")
    return lines


def montage_figure(folder, cmap=None, clim=None):
    """Every axial slice of every map of ``folder`` on one page, one row per map.

    Each row has its colour bar and the defaults of :func:`map_display`, except the opened
    map's row, which takes ``cmap`` and ``clim`` when given; the view is the fitted region's
    bounding box (:func:`view_box`).
    """
    names = list(folder.maps)
    nz = folder.shape[2]
    x0, x1, y0, y1 = view_box(folder)
    cell = min(1.8, 16.0 / nz)
    aspect = (y1 - y0) * folder.zooms[1] / ((x1 - x0) * folder.zooms[0])
    fig = Figure(figsize=(cell * nz + 2.5, cell * aspect * len(names) + 0.8), layout="constrained")
    fig.get_layout_engine().set(w_pad=0.1)  # the default leaves the row labels on the page edge
    axes = fig.subplots(len(names), nz, squeeze=False)
    for row, name in zip(axes, names):
        given = (cmap, clim) if name == folder.name else (None, None)
        label, row_cmap, row_clim = map_display(name, folder.maps[name], folder.region, *given,
                                                folder.dstar_convention)
        for z, ax in enumerate(row):
            image = _show_slice(ax, _axial_slice(folder.maps[name], folder.region, z),
                                folder.zooms, row_cmap, row_clim)
            ax.set(xlim=(x0, x1), ylim=(y0, y1), xticks=[], yticks=[])
            if name == names[0]:
                ax.set_title(f"z = {z}", fontsize=9)
        row[0].set_ylabel(name, fontsize=10)
        fig.colorbar(image, ax=list(row), label=label, shrink=0.9, aspect=10)
    fig.suptitle(os.path.dirname(os.path.abspath(folder.path)))
    return fig
