"""The figures of the simulation results (ivim_simu_plot.py): error and required-SNR maps, one
figure per true D, rows f, columns D*.

Functions build and return figures (``matplotlib.figure.Figure``) without pyplot, so they work
headless; labels and units come from the parameter table, the figures of each kind of result
from the table of simulation kinds (:mod:`ivim_common.constants`).
"""
import functools

import numpy as np
from matplotlib.figure import Figure

from .constants import ERROR_PARAMETERS, PARAMETERS, SIMULATION_KINDS


def _label(name):
    """Label of an estimate as named in the result files (f, Dstar, D, fDstar)."""
    return PARAMETERS[ERROR_PARAMETERS[name]].label


def _axis(name):
    """Axis label of an estimate as named in the result files."""
    return PARAMETERS[ERROR_PARAMETERS[name]].axis


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
    return {f"{base}_{name}_D{i}.{fmt}": functools.partial(_simulation_figure, arrays, name, i)
            for name in SIMULATION_KINDS[str(arrays["kind"])].figures for i in range(len(arrays["D_range"]))
            if NEEDS.get(name, "kind") in arrays}                       # older files lack the SD arrays


# Figures drawn only from files that hold this array.
NEEDS = {"sd": "mean_pred_sd", "coverage": "coverage_95"}
WITH_SD = ("f", "Dstar", "D")      # the estimates with an SD map (f·D* has none)


def _simulation_figure(arrays, name, i_d):
    """One figure: name in sim, sim_STD, true, minSNR, params; i_d the index of the true D."""
    order = [str(v) for v in arrays["err_order"]]
    d_text = f"true D = {arrays['D_range'][i_d]:.3g} mm²/s"
    kind = str(arrays["kind"])
    if name == "true":
        f, dstar = np.meshgrid(arrays["F_range"], arrays["Dstar_range"], indexing="ij")
        truth = {"f": f, "Dstar": dstar, "D": np.full_like(f, arrays["D_range"][i_d]), "fDstar": f * dstar}
        panels = [(truth[p], f"true {_label(p)}", _axis(p), False) for p in order]
        return _grid_figure(arrays, panels, f"True values, {d_text}")
    if name == "minSNR":
        values = arrays["min_snr"][..., i_d]
        n_nan = int(np.isnan(values).sum())
        note = f" ({n_nan} grey cells: not reachable)" if n_nan else ""
        return _grid_figure(arrays, [(values, "required SNR" + note, "SNR (S0/σ)", True)],
                            f"Required SNR, {d_text}")
    if name in NEEDS:
        return _uncertainty_figure(arrays, name, i_d, d_text)
    source = {"sim": "mean_abs_err", "sim_STD": "sd_abs_err", "params": "mean_err_at_min_snr"}[name]
    what = {"sim": "mean |error|", "sim_STD": "SD of |error|", "params": "mean |error| at the required SNR"}[name]
    panels = [(arrays[source][j, ..., i_d], f"{_label(p)}: {what}", "%", name != "params")
              for j, p in enumerate(order)]
    snr_kind = SIMULATION_KINDS[kind].snr
    if snr_kind == "fixed":
        title = f"{what} over {int(arrays['n_noise_draws'])} draws at SNR {float(arrays['snr']):g}, {d_text}"
    elif snr_kind is None:
        title = f"{SIMULATION_KINDS[kind].title}, {d_text}"
    else:
        title = f"Errors at the required SNR ({int(arrays['n_noise_draws'])} draws), {d_text}"
    return _grid_figure(arrays, panels, title)


def _uncertainty_figure(arrays, name, i_d, d_text):
    """sd: the mean predicted SD beside the empirical SD of the estimates, per parameter;
    coverage: the share of draws within 1.96 predicted SD of the truth, and of draws with an SD."""
    order = [str(v) for v in arrays["err_order"]]
    n_draws = int(arrays["n_noise_draws"])
    at = f"{n_draws} draws at SNR {float(arrays['snr']):g}, {d_text}"
    if name == "sd":
        panels = [panel for p in WITH_SD for panel in (
            (arrays["mean_pred_sd"][order.index(p), ..., i_d], f"{_label(p)}: mean predicted SD", "% of true", True),
            (arrays["emp_sd"][order.index(p), ..., i_d], f"{_label(p)}: empirical SD", "% of true", True))]
        return _grid_figure(arrays, panels, f"Predicted and empirical SD (draws with an SD), {at}")
    panels = [(arrays["coverage_95"][order.index(p), ..., i_d], f"{_label(p)}: coverage of ±1.96 SD",
               "share (0.95 nominal)", False) for p in WITH_SD]
    panels.append((arrays["n_with_sd"][order.index("f"), ..., i_d] / n_draws,
                   "share of draws with an SD of f (no bound hit)", "share", False))
    return _grid_figure(arrays, panels, f"Coverage of the 95 % intervals, {at}")


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
