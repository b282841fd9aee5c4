"""The HTML reports of ivim_bids.py: one per participant, one for the group.

Each is one self-contained file: the figures are drawn with matplotlib's Agg canvas into PNG
bytes and inlined as ``data:`` URIs, the style is in the page, nothing is fetched (it opens
from a laptop after ``scp``).  The report never fits: it reads the maps, the fit's sidecar and
the DWI it names, and draws the model's curve (:func:`ivim_common.model.ivim_signal`) at the
fitted parameters.
"""
import base64
import html
import io as bytes_io
import os

import numpy as np
from matplotlib.figure import Figure

from . import io, model
from .io import bids_dataset
from .version import __version__
from .constants import BOUND_BITS, parameters
from .viewer import map_display

MAIN_MAPS = ("S0", "D", "Fivim", "Dstar")
TRUST_MAPS = ("Fivim_sd", "Dstar_sd", "model_choice", "n_at_bound", "RMSE")
AT_BOUND_LABEL = "parameters at a bound"
MAX_SLICES = 8
STYLE = """
body{font-family:system-ui,-apple-system,'Segoe UI',Helvetica,Arial,sans-serif;margin:0;color:#1d2433;background:#f4f5f7}
header{background:#1d2433;color:#fff;padding:18px 32px}header h1{margin:0;font-size:24px}
header p{margin:4px 0 0;color:#b9c0cf;font-size:14px}main{padding:8px 32px 40px;max-width:1400px}
section{background:#fff;border-radius:8px;box-shadow:0 1px 3px rgba(0,0,0,.12);padding:6px 24px 18px;margin:20px 0}
h2{font-size:20px;border-bottom:2px solid #e3e6ec;padding-bottom:6px}h3{font-size:16px;margin:22px 0 8px;color:#34405a}
table{border-collapse:collapse;font-size:13px;margin:6px 0}td,th{border:1px solid #dde1e8;padding:3px 8px;text-align:left;vertical-align:top}
.wide td,.wide th{white-space:nowrap}
.grid{display:grid;grid-template-columns:repeat(auto-fit,minmax(560px,1fr));gap:8px 24px}
th{background:#eef0f4}td.num{text-align:right;font-variant-numeric:tabular-nums}
.cards{display:flex;flex-wrap:wrap;gap:12px;margin:12px 0}
.card{border-radius:6px;padding:10px 14px;min-width:150px;background:#eef0f4}
.card b{display:block;font-size:22px}.card span{font-size:12px;color:#4a5568}
.good{background:#dcf5e3}.warn{background:#fff1cc}.bad{background:#fddede}
img{max-width:100%;display:block;margin:4px 0}code,pre{font-size:12px;background:#eef0f4;padding:2px 4px;border-radius:3px}
pre{white-space:pre-wrap;word-break:break-all;padding:8px}nav a{margin-right:14px}.flag td{background:#fddede}
details{margin:6px 0}.note{font-size:13px;color:#4a5568;margin:2px 0 6px}summary{cursor:pointer;color:#34405a}
"""


def png(fig, dpi=80):
    """A figure as a ``data:image/png;base64,...`` URI."""
    buffer = bytes_io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def esc(value):
    return html.escape(str(value))


def number(value, fmt=".3g"):
    return "n/a" if value is None or (isinstance(value, float) and not np.isfinite(value)) else format(value, fmt)


def table(rows, header=None, numeric=()):
    """An HTML table of ``rows`` (sequences of cells, escaped); ``numeric`` columns right-aligned."""
    head = "" if header is None else "<tr>" + "".join(f"<th>{esc(h)}</th>" for h in header) + "</tr>"
    body = "".join("<tr>" + "".join(f"<td class='num'>{esc(c)}</td>" if i in numeric else f"<td>{esc(c)}</td>"
                                    for i, c in enumerate(row)) + "</tr>" for row in rows)
    return f"<table>{head}{body}</table>"


def page(title, subtitle, body):
    return (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{esc(title)}</title>"
            f"<style>{STYLE}</style></head><body><header><h1>{esc(title)}</h1><p>{esc(subtitle)}</p></header>"
            f"<main>{body}</main></body></html>\n")


# --------------------------------------------------------------------------- participant

class FitData:
    """The maps of one fit, its sidecar, the DWI it names and its fitted voxels."""

    def __init__(self, doc):
        self.doc = doc
        self.maps, self.inside, reference = bids_dataset.read_fit(doc)
        self.zooms = tuple(float(z) for z in reference.header.get_zooms()[:3])
        if "bounds_hit" in self.maps:          # the bit flags as a count, which a colour shows
            flags = np.nan_to_num(self.maps["bounds_hit"]).astype(np.int64)
            self.maps["n_at_bound"] = sum((flags & bit > 0) for bit, *_ in BOUND_BITS).astype(float)
        self.fitted = self.inside & (self.maps["exception"] == 0)
        self.bvals = np.asarray(doc["bvals"], dtype=float)
        self.convention = doc.get("dstar_convention") or "toolbox"
        dwi = io.load_on_grid(doc["inputs"]["dwi"]["abspath"], "DWI", 4, reference)[1]
        raw_bvals = io.read_bvals(doc["inputs"]["bvals"]["abspath"])
        self.background = dwi[..., raw_bvals == raw_bvals.min()].mean(axis=3) if raw_bvals.size == dwi.shape[3] \
            else dwi[..., 0]
        # the signal the fit saw: the DWI's volumes where it used them all (not --directions trace/each)
        self.signal = dwi if dwi.shape[3] == self.bvals.size else None


def write_participant_report(path, title, docs, failures=()):
    """Write the QC report of one participant's fits (``docs``: their sidecars with ``_path``),
    the DWIs that failed first (``failures``: (name, message) pairs)."""
    names = [fit_title(doc) for doc in docs]
    nav = "<nav>" + "".join(f"<a href='#fit{i}'>{esc(n)}</a>" for i, n in enumerate(names)) + "</nav>"
    if failures:
        nav += "<section><h2>Failed</h2>" + table(failures, ("DWI", "why")) + "</section>"
    # one fit's data in memory at a time (each holds its DWI)
    sections = "".join(fit_section(FitData(doc), i, n) for i, (doc, n) in enumerate(zip(docs, names)))
    first = docs[0]
    subtitle = (f"IVIM QC report · {len(docs)} fit(s) · ivim-toolbox {first.get('version', __version__)} · "
                f"{first.get('date', '')}")
    with open(path, "w", encoding="utf-8") as f:
        f.write(page(f"{title}: IVIM maps", subtitle, nav + sections))


def fit_title(doc):
    """The source DWI's entities (and the direction set), e.g. ``sub-01_ses-1_acq-ivim``."""
    name = io.bids_source(doc["inputs"]["dwi"]["path"])[1]
    index = (doc.get("directions") or {}).get("direction_index")
    mode = (doc.get("directions") or {}).get("mode")
    return name + (f" (direction {index})" if index else " (trace)" if mode == "trace" else "")


def fit_section(fit, i, name):
    doc = fit.doc
    parts = [f"<section id='fit{i}'><h2>{esc(name)}</h2>", cards(doc),
             "<h3>Maps</h3><p class='note'>The fitted voxels in colour over the lowest-b image in grey; the "
             "colour ranges are the same in every report (S0: its 1st-99th percentile).</p>",
             f"<img alt='maps' src='{png(mosaic(fit, MAIN_MAPS))}'>",
             "<h3>Distributions in the mask</h3><p class='note'>On the maps' ranges: values beyond them are "
             "counted in the end bins (often a bound of the fit); red: the median.</p>",
             f"<img alt='histograms' src='{png(histograms(fit))}'>",
             "<h3>How far to trust them</h3>", trust_table(doc)]
    trust = [n for n in TRUST_MAPS if n in fit.maps]
    if trust:
        parts.append("<p class='note'>SDs of f and D*; model: red where IVIM beats the mono-exponential, blue "
                     "where it does not; how many of S0, D, f, D* ended at a bound; the RMSE of the fit.</p>"
                     f"<img alt='trust maps' src='{png(mosaic(fit, trust))}'>")
    if fit.signal is not None and fit.fitted.any():
        parts += ["<h3>Voxels: data and fitted curves</h3><p class='note'>The voxels of median, 90th percentile "
                  "and largest RMSE relative to S0: the data (dots) and the model at the fitted parameters.</p>",
                  f"<img alt='curves' src='{png(curves(fit))}'>"]
    parts += ["<h3>Inputs</h3>", inputs_html(doc), "<h3>Provenance</h3>", provenance_html(doc), "</section>"]
    return "".join(parts)


def cards(doc):
    """The key numbers as coloured cards: voxels, SNR measured against needed, model choice, bounds."""
    counts, snr = doc["counts"], doc.get("snr") or {}
    trust = doc.get("trust_summary") or {}
    measured, needed = snr.get("measured"), snr.get("required_median")
    snr_class = ("" if measured is None or needed is None else "good" if measured >= needed
                 else "warn" if measured >= needed / 2 else "bad")
    failed_share = counts["failed"] / max(counts["mask_voxels"], 1)
    ivim = trust.get("share_model_choice_ivim")
    at_bound = any_bound_share(trust)
    items = [
        (f"{counts['fitted']}", f"voxels fitted · {counts['failed']} failed", "bad" if failed_share > 0.05 else ""),
        (number(measured, ".0f"), f"SNR at the lowest b (measured) · needs {number(needed, '.0f')}", snr_class),
        ("n/a" if ivim is None else f"{100 * ivim:.0f} %", "voxels where IVIM beats mono-exponential",
         "" if ivim is None else "good" if ivim >= 0.5 else "warn"),
        ("n/a" if at_bound is None else f"{100 * at_bound:.0f} %", "voxels with a parameter at a bound",
         "" if at_bound is None else "good" if at_bound < 0.2 else "warn"),
        *([(number(trust["median_rmse_over_sigma"], ".2f"), "median RMSE / σ (≈ 1 when the model fits)", "")]
          if trust.get("median_rmse_over_sigma") is not None else []),
        (f"{doc.get('run_time_s', 0):.1f} s", f"fit time · engine {doc.get('engine')}", ""),
    ]
    return "<div class='cards'>" + "".join(f"<div class='card {c}'><b>{esc(v)}</b><span>{esc(t)}</span></div>"
                                           for v, t, c in items) + "</div>"


def any_bound_share(trust):
    """Upper bound of the share of voxels with some parameter at a bound (the largest share of one bound)."""
    shares = [v for v in (trust.get("share_at_bound") or {}).values() if v is not None]
    return max(shares) if shares else None


def region_slices(mask):
    """Up to MAX_SLICES axial slices through the mask, evenly spaced."""
    zs = np.flatnonzero(mask.any(axis=(0, 1)))
    if zs.size == 0:
        zs = np.arange(mask.shape[2])
    return zs[np.unique(np.linspace(0, zs.size - 1, min(MAX_SLICES, zs.size)).round().astype(int))]


def crop_box(mask, margin=4):
    """x and y slices around the mask, with a margin (voxels)."""
    xs, ys = np.nonzero(mask.any(axis=2)) if mask.any() else (np.arange(mask.shape[0]), np.arange(mask.shape[1]))
    return (slice(max(xs.min() - margin, 0), xs.max() + margin + 1),
            slice(max(ys.min() - margin, 0), ys.max() + margin + 1))


def strip(volume, bx, by, zs):
    """The slices ``zs`` of a volume cropped to ``bx, by``, side by side (x to the right, y up),
    one NaN column between them: (rows, columns) for imshow with origin 'lower'."""
    gap = np.full((by.stop - by.start if by.stop <= volume.shape[1] else volume.shape[1] - by.start, 1), np.nan)
    parts = []
    for z in zs:
        parts += [volume[bx, by, z].T, gap]
    return np.hstack(parts[:-1])


def mosaic(fit, names):
    """One row per map, the slices side by side: the map over the lowest-b image in grey, the
    colour range fixed per map (the parameter table's), a colour bar per row."""
    zs = region_slices(fit.inside)
    bx, by = crop_box(fit.inside)
    grey = strip(fit.background, bx, by, zs)
    inside = strip(fit.inside.astype(float), bx, by, zs) > 0
    rows, columns = grey.shape
    aspect = fit.zooms[1] / fit.zooms[0]
    width = min(11.0, 1.6 * len(zs))
    fig = Figure(figsize=(width + 1.6, width * rows * aspect / columns * len(names) + 0.4), layout="constrained")
    axes = fig.subplots(len(names), 1, squeeze=False)[:, 0]
    finite = grey[np.isfinite(grey)]
    glim = np.percentile(finite, [1, 99.5]) if finite.size else (0, 1)
    table_ = parameters(fit.convention)
    for ax, name in zip(axes, names):
        label, cmap, clim = (map_display(name, fit.maps[name], fit.fitted, dstar_convention=fit.convention)
                             if name != "n_at_bound" else (AT_BOUND_LABEL, "Reds", (0, 4)))
        ax.set_facecolor("white")
        ax.imshow(grey, origin="lower", cmap="gray", vmin=glim[0], vmax=glim[1], aspect=aspect,
                  interpolation="nearest")
        shown = np.ma.masked_where(~inside, strip(fit.maps[name], bx, by, zs))
        image = ax.imshow(shown, origin="lower", cmap=cmap, vmin=clim[0], vmax=clim[1], aspect=aspect,
                          interpolation="nearest")
        ax.set(xticks=[], yticks=[])
        ax.set_ylabel(table_[name].label if name in table_ else "at a bound", fontsize=10)
        bar = fig.colorbar(image, ax=ax, shrink=0.9, aspect=8, pad=0.01)
        bar.set_label(label, fontsize=8)
        bar.ax.tick_params(labelsize=7)
    step = columns / len(zs)
    axes[0].set_xticks([(k + 0.5) * step - 0.5 for k in range(len(zs))], [f"z = {z}" for z in zs], fontsize=8)
    axes[0].xaxis.tick_top()
    return fig


def histograms(fit):
    """In-mask histograms of S0, D, f, D* over the fitted voxels, on the mosaic's ranges, with the median."""
    fig = Figure(figsize=(12, 2.4), layout="constrained")
    axes = fig.subplots(1, len(MAIN_MAPS))
    for ax, name in zip(axes, MAIN_MAPS):
        values = fit.maps[name][fit.fitted]
        values = values[np.isfinite(values)]
        label, _, clim = map_display(name, fit.maps[name], fit.fitted, dstar_convention=fit.convention)
        ax.hist(np.clip(values, *clim), bins=40, range=clim, color="#4a6fa5")
        if values.size:
            ax.axvline(np.median(values), color="#d9534f", lw=1.5)
            ax.set_title(f"median {np.median(values):.3g}", fontsize=9)
        ax.set_xlabel(label, fontsize=9)
        ax.tick_params(labelsize=7)
    axes[0].set_ylabel("voxels", fontsize=9)
    return fig


def chosen_voxels(fit):
    """``{label: (x, y, z)}``: the voxels of median, 90th-percentile and largest RMSE relative
    to S0 among the fitted ones."""
    where = np.argwhere(fit.fitted)
    score = fit.maps["RMSE"][fit.fitted] / np.abs(fit.maps["S0"][fit.fitted]) if "RMSE" in fit.maps \
        else np.zeros(len(where))
    score = np.where(np.isfinite(score), score, -np.inf)
    order = np.argsort(score, kind="stable")
    picks = {"typical (median RMSE)": order[len(order) // 2],
             "90th percentile RMSE": order[min(int(0.9 * len(order)), len(order) - 1)],
             "worst (largest RMSE)": order[-1]}
    return {label: tuple(int(v) for v in where[i]) for label, i in picks.items()}


def curves(fit):
    """The signal against b of a few voxels (:func:`chosen_voxels`) and the model at their fit."""
    voxels = chosen_voxels(fit)
    fig = Figure(figsize=(12, 3.0), layout="constrained")
    axes = fig.subplots(1, len(voxels))
    b_curve = np.linspace(0, fit.bvals.max(), 200)
    for ax, (label, ijk) in zip(axes, voxels.items()):
        p = {n: fit.maps[n][ijk] for n in MAIN_MAPS}
        dstar = model.excess_dstar(p["Dstar"], p["D"], fit.convention)
        ax.plot(fit.bvals, fit.signal[ijk], "o", ms=4, color="#1d2433", label="data")
        ax.plot(b_curve, model.ivim_signal(b_curve, p["S0"], p["D"], p["Fivim"], dstar), color="#d9534f",
                label="fit")
        ax.set_ylim(bottom=0)
        ax.set_title(f"{label} · voxel {ijk}", fontsize=9)
        ax.text(0.98, 0.96, f"f = {p['Fivim']:.3f}\nD = {p['D']:.2e}\nD* = {p['Dstar']:.2e}",
                transform=ax.transAxes, ha="right", va="top", fontsize=8, family="monospace")
        ax.set_xlabel("b (s/mm²)", fontsize=9)
        ax.tick_params(labelsize=7)
    axes[0].set_ylabel("signal", fontsize=9)
    axes[0].legend(fontsize=8, loc="lower left")
    return fig


def trust_table(doc):
    """The trust summary: method of the SDs, model choice, shares at each bound, RMSE/σ."""
    trust = doc.get("trust_summary") or {}
    rows = [("uncertainty (the SD maps)", (doc.get("uncertainty") or {}).get("method", "n/a")),
            ("voxels where IVIM is preferred",
             number(None if trust.get("share_model_choice_ivim") is None
                    else 100 * trust["share_model_choice_ivim"], ".1f") + " %"),
            *([("median RMSE / σ", number(trust["median_rmse_over_sigma"], ".2f")), ("σ", trust.get("sigma"))]
              if trust.get("median_rmse_over_sigma") is not None else [])]
    at = trust.get("share_at_bound") or {}
    rows += [(f"at the {side} bound of {parameters()[name].label}", f"{100 * at.get(f'{name} {side}'):.1f} %")
             for _, name, side in BOUND_BITS if at.get(f"{name} {side}")]
    summary = doc.get("summary") or {}
    medians = [(parameters(doc.get("dstar_convention") or "toolbox")[n].label,
                number((summary.get(n) or {}).get("median"), ".4g"),
                " – ".join(number(v, ".4g") for v in (summary.get(n) or {}).get("iqr", [None, None])))
               for n in (*MAIN_MAPS, "Fivim_sd", "Dstar_sd") if n in summary]
    return ("<div style='display:flex;gap:32px;flex-wrap:wrap'>" + table(rows) +
            table(medians, ("map", "median", "IQR"), numeric=(1, 2)) + "</div>")


def inputs_html(doc):
    """The input files (with sha256), the BIDS metadata and the b-value table."""
    inputs = doc.get("inputs") or {}
    files = [(role, rec.get("path"), (rec.get("sha256") or "")[:16])
             for role, rec in inputs.items() if isinstance(rec, dict)]
    files += [("dwi json", rec.get("path"), (rec.get("sha256") or "")[:16]) for rec in inputs.get("dwi_json") or []]
    bvals = np.asarray(doc["bvals"], dtype=float)
    values, counts = np.unique(bvals, return_counts=True)
    btable = table([("b (s/mm²)", *(f"{v:g}" for v in values)), ("volumes", *counts)])
    snr = doc.get("snr") or {}
    meta = doc.get("dwi_metadata") or {}
    shown = {k: v for k, v in meta.items() if not isinstance(v, (list, dict))}
    return (table(files, ("input", "path", "sha256 (first 16)")) + btable +
            table([("voxels fitted", doc.get("voxel_selection")),
                   ("SNR at the lowest b", f"{number(snr.get('measured'), '.1f')}: σ = {number(snr.get('sigma'))} "
                                           f"from the {snr.get('sigma_method', 'n/a')}"),
                   ("SNR needed", f"median {number(snr.get('required_median'), '.0f')}, 90th percentile "
                                  f"{number(snr.get('required_p90'), '.0f')}: {snr.get('required_definition', 'n/a')}")]) +
            (f"<details><summary>DWI metadata (JSON sidecars, {len(shown)} keys)</summary>"
             + table(sorted(shown.items())) + "</details>" if shown else ""))


def provenance_html(doc):
    """Command, version, date, options and run time."""
    bounds = doc.get("bounds")
    if isinstance(bounds, dict):           # the sidecar's rules, one per line
        bounds = "; ".join(f"{name}: {rule}" for name, rule in bounds.items())
    options = [("approach", doc.get("approach")), ("bounds", bounds),
               ("bounds version", doc.get("bounds_version")), ("D* convention", doc.get("dstar_convention")),
               ("engine", f"{doc.get('engine')} {doc.get('engine_options') or ''}"), ("seed", doc.get("seed")),
               ("jobs", doc.get("jobs")), ("model choice", (doc.get("model_choice") or {}).get("criterion")),
               ("directions", (doc.get("directions") or {}).get("mode")),
               ("version", doc.get("version")), ("date", doc.get("date")), ("run time", f"{doc.get('run_time_s')} s"),
               ("sidecar", os.path.basename(doc["_path"]))]
    return f"<pre>{esc(doc.get('command'))}</pre>" + table([(k, v) for k, v in options if v not in (None, "")])


# --------------------------------------------------------------------------- group

GROUP_SHOWN = (("f", "Fivim"), ("D", "D"), ("Dstar", "Dstar"), ("S0", "S0"))


OUTLIER_MADS, OUTLIER_MIN_SHARE = 3.0, 0.05


def outliers(medians):
    """Indices of the medians farther from the group's median than OUTLIER_MADS scaled MADs
    (1.4826·MAD, the SD of a Gaussian) and than OUTLIER_MIN_SHARE of the group's median (so
    that a group of near-identical fits flags nobody)."""
    values = np.asarray([np.nan if m is None else m for m in medians], dtype=float)
    finite = values[np.isfinite(values)]
    if finite.size < 3:
        return set()
    centre = np.median(finite)
    spread = max(OUTLIER_MADS * 1.4826 * np.median(np.abs(finite - centre)), OUTLIER_MIN_SHARE * abs(centre))
    return set(np.flatnonzero(np.abs(values - centre) > spread).tolist())


MAX_BOXES = 40      # beyond, each DWI is its median and quartiles, and only the outliers are named


def group_figure(labels, values, column, name, flagged, convention):
    """One parameter's voxel values per DWI side by side, flagged DWIs in red: box plots, or
    beyond MAX_BOXES DWIs the median (dot) and quartiles (line) of each, the outliers named."""
    many = len(labels) > MAX_BOXES
    fig = Figure(figsize=(7 if many else min(max(6.5, 1.2 + 0.45 * len(labels)), 24), 3.6), layout="constrained")
    ax = fig.subplots()
    data = [v.get(column, np.empty(0)) for v in values]
    data = [d[np.isfinite(d)] for d in data]
    data = [d if d.size else np.array([np.nan]) for d in data]
    colours = ["#d9534f" if k in flagged else "#4a6fa5" for k in range(len(labels))]
    if many:
        x = np.arange(1, len(labels) + 1)
        q25, q50, q75 = np.array([np.percentile(d, [25, 50, 75]) for d in data]).T
        ax.vlines(x, q25, q75, colors=colours, lw=1)
        ax.scatter(x, q50, c=colours, s=8, zorder=3)
        shown = sorted(flagged)
    else:
        boxes = ax.boxplot(data, showfliers=False, patch_artist=True, widths=0.6)
        for k, box in enumerate(boxes["boxes"]):
            box.set(facecolor="#f3a5a5" if k in flagged else "#b7c9e2", edgecolor="#1d2433")
        shown = range(len(labels))
    ax.set_xticks([k + 1 for k in shown], [labels[k] for k in shown], rotation=60, ha="right", fontsize=7)
    ax.set_xlim(0.5, len(labels) + 0.5)
    ax.set_ylabel(parameters(convention)[name].axis, fontsize=9)
    ax.tick_params(axis="y", labelsize=7)
    ax.grid(axis="y", alpha=0.3)
    return fig


def write_group_report(path, rows, columns, values, missing=()):
    """Write ``group_ivim.html``: the participants without a fit (``missing``); per parameter,
    its distribution in each DWI's mask side by side (box: quartiles, whiskers 1.5 IQR), DWIs
    whose median is an outlier (:func:`outliers`) in red and listed; then the group table,
    outlier cells in red."""
    mask_rows = [r for r in rows if r["roi"] == "mask"]
    labels = [" ".join(str(r[c]) if c in ("participant_id", "session_id") else f"{c}-{r[c]}"
                       for c in columns[:columns.index("roi")] if r.get(c) not in (None, "")) for r in mask_rows]
    convention = (values[0][0].get("dstar_convention") if values else None) or "toolbox"
    body, flags = [], {}
    for column, name in GROUP_SHOWN:
        flagged = outliers([r.get(f"{column}_median") for r in mask_rows])
        flags[column] = {id(mask_rows[k]) for k in flagged}
        listed = ", ".join(labels[k] for k in sorted(flagged)) or "none"
        figure = group_figure(labels, [v for _, v in values], column, name, flagged, convention)
        body.append(f"<div><h3>{esc(parameters(convention)[name].axis)}</h3><p>outliers: <b>{esc(listed)}</b></p>"
                    f"<img alt='{esc(column)}' src='{png(figure)}'></div>")
    head = "".join(f"<th>{esc(c)}</th>" for c in columns)
    lines = []
    for row in rows:
        cells = []
        for c in columns:
            bad = any(c == f"{col}_median" and id(row) in ids for col, ids in flags.items())
            text = "n/a" if row.get(c) is None else (f"{row[c]:.4g}" if isinstance(row[c], float) else str(row[c]))
            if c == "participant_id":
                text = f"<a href='{esc(row[c])}.html'>{esc(text)}</a>"
            else:
                text = esc(text)
            cells.append(f"<td style='background:#fddede'>{text}</td>" if bad else f"<td>{text}</td>")
        lines.append("<tr>" + "".join(cells) + "</tr>")
    table_html = f"<div style='overflow-x:auto'><table class='wide'><tr>{head}</tr>{''.join(lines)}</table></div>"
    n_participants = len({r["participant_id"] for r in rows})
    absent = (f"<p class='card bad'>No fit (failed or not run): <b>{esc(', '.join(missing))}</b></p>"
              if missing else "")
    page_body = (f"<section><h2>Distributions in each DWI's mask</h2>{absent}<p>Boxes: quartiles of the fitted "
                 f"voxels, whiskers 1.5 IQR (beyond {MAX_BOXES} DWIs: the median and quartiles); in red, a DWI "
                 f"whose median lies farther from the group's median than {OUTLIER_MADS:g} scaled MADs and "
                 f"{100 * OUTLIER_MIN_SHARE:g} %.</p><div class='grid'>"
                 + "".join(body) + "</div></section>"
                 "<section><h2>Group table (group_ivim.tsv)</h2>" + table_html + "</section>")
    with open(path, "w", encoding="utf-8") as f:
        f.write(page("IVIM group report", f"{n_participants} participant(s) · {len(mask_rows)} fit(s) · "
                     f"ivim-toolbox {__version__}", page_body))
