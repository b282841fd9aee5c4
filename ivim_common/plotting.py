"""Every matplotlib figure of the toolbox.

Functions build and return figures (``matplotlib.figure.Figure``) without pyplot, so they work
headless; scripts save them or hand them to pyplot.
"""
import functools
import os

import numpy as np
from matplotlib.figure import Figure

from . import model


# =============================================================================
# Viewer: parameter maps and the fit behind any voxel (ivim_view_fits.py)
# =============================================================================

# Per map: colour-bar label, default colour map, default limits (None: 1st-99th percentile).
MAP_DISPLAY = {
    "S0": ("S0 (DWI units)", "gray", None),
    "D": ("D (mm²/s)", "viridis", (0.0, 3e-3)),
    "Dstar": ("D* (mm²/s)", "viridis", (0.0, 0.0525)),
    "Fivim": ("f (fraction)", "viridis", (0.0, 0.35)),
    "FivimXDstar": ("f·D* (mm²/s)", "viridis", (0.0, 0.01)),
    "AIC": ("AIC", "viridis", None),
    "R2": ("R² (on the signal)", "viridis", (0.0, 1.0)),
    "exception": ("exception (1 = failed)", "viridis", (0.0, 1.0)),
}
STATUS_TEXT = {"fitted": "status: fitted", "outside mask": "status: outside the mask\n(not fitted)",
               "failed": "status: fit failed\n(exception = 1)"}
OUTSIDE_COLOR = "white"  # behind voxels outside the fitted region and failed (NaN) voxels
# Lines of the parameter panel: map, label, unit, format.
VALUE_LINES = (
    ("S0", "S0", "", ".4g"),
    ("D", "D", "mm²/s", ".3e"),
    ("Dstar", "D*", "mm²/s", ".3e"),
    ("Fivim", "f", "", ".3f"),
    ("FivimXDstar", "f·D*", "mm²/s", ".3e"),
    ("R2", "R²", "", ".3f"),
    ("AIC", "AIC", "", ".4g"),
)


def map_display(name, data, region=None, cmap=None, clim=None):
    """Colour-bar label, colour map and limits of a map (defaults from MAP_DISPLAY).

    Maps without default limits (S0, AIC, others) get the 1st-99th percentiles of their finite
    values in ``region`` (boolean, like ``data``; default all voxels).
    """
    label, default_cmap, default_clim = MAP_DISPLAY.get(name, (name, "viridis", None))
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
    folder : ivim_common.io.FitFolder
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
        label, self.cmap, self.clim = map_display(folder.name, data, folder.region, cmap, clim)
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
        b = np.linspace(0.0, 1.05 * np.max(self.folder.bvals), 200)
        self._plot("fit", b, model.ivim_signal(b, s0, d, f, dstar), "-", color="tab:red", lw=2,
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
        rows = [f"{label:<5} = {values[name]:{fmt}} {unit}"
                for name, label, unit, fmt in VALUE_LINES if name in values]
        text = "\n".join([STATUS_TEXT[status], ""] + rows + [""] + notes)
        self.ax_text.text(0.03, 0.7, text, va="top", family="monospace", fontsize=10,
                          transform=self.ax_text.transAxes)


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
        label, row_cmap, row_clim = map_display(name, folder.maps[name], folder.region, *given)
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


# =============================================================================
# Simulation: error and required-SNR maps, one figure per true D, rows f, columns D*
# (ivim_simu_plot.py)
# =============================================================================

_SIM_LABELS = {"f": "f", "Dstar": "D*", "D": "D", "fDstar": "f·D*"}
_SIM_UNITS = {"f": "", "Dstar": " (mm²/s)", "D": " (mm²/s)", "fDstar": " (mm²/s)"}


def simulation_figures(arrays, base, fmt="png"):
    """The figures of a simulation result (arrays of ivim_common.simulation), to draw one by one.

    Parameters
    ----------
    arrays : dict of ndarray
        A complete result (kind, F_range, Dstar_range, D_range, err_order and the kind's arrays).
    base : str
        Path prefix of the figures.
    fmt : {'png', 'pdf'}

    Returns
    -------
    dict
        ``{path: function returning the Figure}``.  error_nonoise: ``<base>_sim_D{i}``,
        ``<base>_true_D{i}``; error_noise: also ``<base>_sim_STD_D{i}``; required_snr:
        ``<base>_minSNR_D{i}``, ``<base>_params_D{i}``; i the index of the true D.
    """
    kinds = {"error_nonoise": ("sim", "true"), "error_noise": ("sim", "sim_STD", "true"),
             "required_snr": ("minSNR", "params")}
    return {f"{base}_{name}_D{i}.{fmt}": functools.partial(_simulation_figure, arrays, name, i)
            for name in kinds[str(arrays["kind"])] for i in range(len(arrays["D_range"]))}


def _simulation_figure(arrays, name, i_d):
    """One figure: name in sim, sim_STD, true, minSNR, params; i_d the index of the true D."""
    order = [str(v) for v in arrays["err_order"]]
    d_text = f"true D = {arrays['D_range'][i_d]:.3g} mm²/s"
    kind = str(arrays["kind"])
    if name == "true":
        f, dstar = np.meshgrid(arrays["F_range"], arrays["Dstar_range"], indexing="ij")
        truth = {"f": f, "Dstar": dstar, "D": np.full_like(f, arrays["D_range"][i_d]), "fDstar": f * dstar}
        panels = [(truth[p], f"true {_SIM_LABELS[p]}", _SIM_LABELS[p] + _SIM_UNITS[p], False)
                  for p in order]
        return _grid_figure(arrays, panels, f"True values, {d_text}")
    if name == "minSNR":
        values = arrays["min_snr"][..., i_d]
        n_nan = int(np.isnan(values).sum())
        note = f" ({n_nan} grey cells: not reachable)" if n_nan else ""
        return _grid_figure(arrays, [(values, "required SNR" + note, "SNR (S0/σ)", True)],
                            f"Required SNR, {d_text}")
    source = {"sim": "mean_abs_err", "sim_STD": "sd_abs_err", "params": "mean_err_at_min_snr"}[name]
    what = {"sim": "mean |error|", "sim_STD": "SD of |error|", "params": "mean |error| at the required SNR"}[name]
    panels = [(arrays[source][j, ..., i_d], f"{_SIM_LABELS[p]}: {what}", "%", name != "params")
              for j, p in enumerate(order)]
    if kind == "error_noise":
        title = f"{what} over {int(arrays['n_noise_draws'])} draws at SNR {float(arrays['snr']):g}, {d_text}"
    elif kind == "error_nonoise":
        title = f"Error without noise, {d_text}"
    else:
        title = f"Errors at the required SNR ({int(arrays['n_noise_draws'])} draws), {d_text}"
    return _grid_figure(arrays, panels, title)


def _grid_figure(arrays, panels, title):
    """Heat maps (rows f, columns D*) with colour bars; each panel (values, title, unit, log?).

    A log colour scale is used when asked and every finite value is > 0.  NaN cells are grey.
    """
    from matplotlib.colors import LogNorm, Normalize

    n_cols = 1 if len(panels) == 1 else 2
    n_rows = -(-len(panels) // n_cols)
    fig = Figure(figsize=(6.2 * n_cols, 4.8 * n_rows + 0.6), layout="constrained")
    axes = fig.subplots(n_rows, n_cols, squeeze=False).ravel()
    f_range, dstar_range = arrays["F_range"], arrays["Dstar_range"]
    for ax, (values, panel_title, unit, log) in zip(axes, panels):
        finite = values[np.isfinite(values)]
        norm = Normalize()
        if log and finite.size and 0 < finite.min() < finite.max():
            norm = LogNorm(finite.min(), finite.max())
        ax.set_facecolor("0.75")
        mesh = ax.pcolormesh(np.ma.masked_invalid(values), norm=norm, cmap="viridis")
        stats = (f"median {np.median(finite):.3g} [{finite.min():.3g}–{finite.max():.3g}]"
                 if finite.size else "no finite value")
        ax.set_title(f"{panel_title}\n{stats}", fontsize=10)
        ax.set_xticks(np.arange(len(dstar_range)) + 0.5, [f"{v * 1e3:.3g}" for v in dstar_range],
                      rotation=45 if len(dstar_range) > 6 else 0)
        ax.set_yticks(np.arange(len(f_range)) + 0.5, [f"{v:.3g}" for v in f_range])
        ax.set_xlabel("true D* (10⁻³ mm²/s)")
        ax.set_ylabel("true f")
        fig.colorbar(mesh, ax=ax, label=unit)
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    fig.suptitle(title)
    return fig


# =============================================================================
# Protocol design (ivim_simu_optimize_bvals.py)
# =============================================================================

def design_figure(grid, bvals, min_snr, ref_bvals, ref_min_snr, title):
    """b-values of the designed and the reference protocols, and their required-SNR maps.

    Parameters
    ----------
    grid : tuple (F_range, Dstar_range, D_range)
    bvals, ref_bvals : array_like, b-values of the volumes (repeats included)
    min_snr, ref_min_snr : ndarray (nF, nDstar, nD), NaN = not reachable (grey)
    title : str
    """
    from matplotlib.colors import LogNorm

    f_range, dstar_range, d_range = grid
    n_d = len(d_range)
    fig = Figure(figsize=(5.2 * max(n_d, 2), 4.2 * 3), layout="constrained")
    spec = fig.add_gridspec(3, max(n_d, 2))
    ax = fig.add_subplot(spec[0, :])
    for values, label, offset in ((ref_bvals, "reference", -0.2), (bvals, "designed", 0.2)):
        b, n = np.unique(values, return_counts=True)
        ax.bar(b + offset * 8, n, width=8, label=f"{label} ({len(values)} volumes)")
    ax.set_xlabel("b (s/mm²)")
    ax.set_ylabel("volumes")
    ax.legend()
    finite = np.concatenate([v[np.isfinite(v)] for v in (min_snr, ref_min_snr)])
    norm = LogNorm(finite.min(), finite.max()) if finite.size and 0 < finite.min() < finite.max() else None
    for row, (values, label) in enumerate(((ref_min_snr, "reference"), (min_snr, "designed")), start=1):
        for i_d in range(n_d):
            ax = fig.add_subplot(spec[row, i_d])
            ax.set_facecolor("0.75")
            mesh = ax.pcolormesh(np.ma.masked_invalid(values[..., i_d]), norm=norm, cmap="viridis")
            cells = values[..., i_d]
            snr = np.where(np.isnan(cells), np.inf, cells)
            ax.set_title(f"{label}, D = {d_range[i_d]:.3g} mm²/s: median {np.median(snr):.4g}, "
                         f"{int(np.isnan(cells).sum())} grey (not reachable)", fontsize=9)
            ax.set_xticks(np.arange(len(dstar_range)) + 0.5, [f"{v * 1e3:.3g}" for v in dstar_range], rotation=45)
            ax.set_yticks(np.arange(len(f_range)) + 0.5, [f"{v:.3g}" for v in f_range])
            ax.set_xlabel("true D* (10⁻³ mm²/s)")
            ax.set_ylabel("true f")
            fig.colorbar(mesh, ax=ax, label="required SNR (S0/σ)")
    fig.suptitle(f"Required SNR (Monte Carlo), {title}")
    return fig
