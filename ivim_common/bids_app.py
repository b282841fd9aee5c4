"""The BIDS App's two levels (ivim_bids.py): fit every DWI of the chosen participants, then
summarise every fit of the derivatives in a group table.

participant: for each DWI (:mod:`ivim_common.io.bids_dataset`), a mask (auto, none, or from a
derivatives dataset), the fit of :class:`ivim_common.IvimModel`, its maps in BEP016 names
(:func:`ivim_common.io.bids_paths`), the SNR at the lowest b measured and the SNR the protocol
needs, then one HTML report per participant (:mod:`ivim_common.report`).  A DWI whose outputs
are complete is skipped (a rerun resumes); a DWI that fails is reported in one line and the
others go on.  group: ``group_ivim.tsv`` (one row per DWI and region) and ``group_ivim.html``.
"""
import dataclasses
import glob
import os
import sys
import time
import warnings

import numpy as np

from . import cli, design, io, model, report, spatial
from .io import bids_dataset
from .constants import DEFAULT_MAX_ERROR
from .errors import InputError, IvimError, OutputExistsError

PROG = "ivim_bids.py"
BIDSIGNORE = "*.html\ngroup_ivim.tsv\n"
# The tissue range of the required SNR: the simulation scripts' default grid (ivim_simu_*.py).
TISSUE_GRID = (np.linspace(0.01, 0.30, 10), np.linspace(3.0e-3, 35e-3, 10), np.array([0.3e-3, 1.5e-3]))
GROUP_MAPS = {"S0": "S0", "D": "D", "f": "Fivim", "Dstar": "Dstar",
              "S0_sd": "S0_sd", "D_sd": "D_sd", "f_sd": "Fivim_sd", "Dstar_sd": "Dstar_sd"}
STAT_COLUMNS = ["roi", "n_voxels", *(f"{c}_{s}" for c in GROUP_MAPS for s in ("median", "iqr")),
                "share_ivim", "share_at_bound"]


@dataclasses.dataclass
class Outcome:
    """What the participant level did: per participant, the DWIs fitted, skipped, failed."""
    fitted: list = dataclasses.field(default_factory=list)
    skipped: list = dataclasses.field(default_factory=list)
    failed: dict = dataclasses.field(default_factory=dict)      # participant -> first message


def say(args, text):
    """One line on stderr (the batch log), unless -v 0."""
    if args.verbose >= 1:
        print(f"{PROG}: {text}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- participant level

def participant_level(args, argv, dataset, labels):
    """Fit every DWI of the participants ``labels``, write their reports; returns an
    :class:`Outcome`.  A failure does not stop the others; at the end, IvimError names the
    participants that failed (exit code 1)."""
    write_shared_files(args.output_dir, dataset)
    outcome = Outcome()
    for label in labels:
        try:
            with io.output_folder_lock(os.path.join(args.output_dir, f"sub-{label}")):
                participant(args, argv, dataset, label, outcome)
        except IvimError as exc:
            outcome.failed.setdefault(label, " ".join(str(exc).split()))
            say(args, f"sub-{label}: FAILED: {outcome.failed[label]}")
    say(args, f"{len(labels)} participant(s): {len(labels) - len(outcome.failed)} done, {len(outcome.fitted)} "
              f"DWI(s) fitted, {len(outcome.skipped)} skipped as complete")
    if outcome.failed:
        raise IvimError(f"{len(outcome.failed)} of {len(labels)} participant(s) failed: "
                        f"{', '.join('sub-' + p for p in outcome.failed)} (see the lines above)")
    return outcome


def participant(args, argv, dataset, label, outcome):
    """Fit the DWIs of one participant and write its report (when something changed)."""
    dwis = dataset.dwis(label, args.session_label)
    if not dwis:
        raise InputError(f"no DWI (sub-{label}/[ses-*/]dwi/*_dwi.nii[.gz]"
                         f"{' in session(s) ' + ', '.join(args.session_label) if args.session_label else ''})")
    docs, changed, failures = [], False, []
    for dwi in dwis:
        try:
            done = complete_fits(args.output_dir, dwi)
            if done and not args.force:
                outcome.skipped.append(dwi.name)
                say(args, f"{dwi.name}: skipped, its outputs are complete (--force to redo)")
            else:
                done = fit_dwi(args, argv, dwi)
                outcome.fitted.append(dwi.name)
                changed = True
            docs += done
        except IvimError as exc:
            message = " ".join(str(exc).split())
            outcome.failed.setdefault(label, message)
            failures.append((dwi.name, message))
            say(args, f"{dwi.name}: FAILED: {message}")
        except KeyboardInterrupt:
            say(args, f"{dwi.name}: interrupted, nothing of it written; the DWIs finished before are "
                      "complete (a rerun skips them)")
            raise
    html = os.path.join(args.output_dir, f"sub-{label}.html")
    if docs and (changed or args.force or not os.path.exists(html)):
        start = time.perf_counter()
        with io.staged_outputs([html]) as tmp:
            report.write_participant_report(tmp[html], f"sub-{label}", docs, failures)
        say(args, f"sub-{label}: report {html} ({time.perf_counter() - start:.1f} s)")


def write_shared_files(root, dataset):
    """``dataset_description.json`` and ``.bidsignore`` of the derivatives, if not there yet:
    each written whole by one run (array tasks starting together: the first wins, the others
    find it)."""
    description = {**io.dataset_description(),
                   "SourceDatasets": [{"URL": "file://" + dataset.root,
                                       **({"Name": dataset.description["Name"]} if "Name" in dataset.description
                                          else {})}]}
    for name, write in (("dataset_description.json", lambda p: io.write_json(p, description)),
                        (".bidsignore", lambda p: write_text(p, BIDSIGNORE))):
        path = os.path.join(root, name)
        if os.path.exists(path):
            continue
        try:
            with io.staged_outputs([path], force=False) as tmp:
                write(tmp[path])
        except OutputExistsError:
            pass                        # another task wrote it meanwhile


def write_text(path, text):
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


def fit_sidecars(root, dwi_folders, dwi_name):
    """The fit sidecars (:func:`ivim_common.io.bids_fit_sidecar`) of a DWI's maps under ``root``."""
    folder = os.path.join(root, *dwi_folders)
    return sorted(glob.glob(os.path.join(folder, glob.escape(dwi_name) + "_model-ivim_dwimap.json"))
                  + glob.glob(os.path.join(folder, glob.escape(dwi_name) + "_model-ivim_desc-*_dwimap.json")))


def complete_fits(root, dwi):
    """The sidecars (as dicts, with ``_path``) of a DWI's fits when every map they list is
    there; [] when any is missing (never fitted, or interrupted before its files moved in)."""
    docs = []
    for path in fit_sidecars(root, dwi.folders, io.bids_source(dwi.path)[1]):
        doc = io.read_sidecar(path)
        folder = os.path.dirname(path)
        if not doc or not all(os.path.isfile(os.path.join(folder, f)) for f in (doc.get("maps") or {}).values()):
            return []
        docs.append({**doc, "_path": path})
    return docs


def fit_dwi(args, argv, dwi):
    """Mask, fit and write one DWI (every set of --directions); returns the fit sidecars written."""
    start = time.perf_counter()
    if dwi.bval is None:
        raise InputError(f"DWI {dwi.path}: no .bval applies to it (none in its folder or above, "
                         "BIDS inheritance)")
    mask_path = bids_dataset.find_derivative(args.mask_dir, dwi, "mask", "mask") if args.mask_dir else None
    inputs = io.load_fit_inputs(dwi.path, dwi.bval, mask_path, args.model)
    folders, stem = io.bids_source(dwi.path)
    auto_path = None
    if args.mask == "auto" and mask_path is None:
        inputs.selected = auto_mask(inputs.data, inputs.bvals)
        auto_path = os.path.join(args.output_dir, *folders, f"{stem}_desc-brain_mask.nii.gz")
        inputs.selection = f"auto mask {auto_path}: {AUTO_MASK_TEXT}"
    if args.engine_options.get("prior") == "spatial":
        try:
            spatial.check_volume(inputs.selected.shape, int(inputs.selected.sum()))
        except ValueError as err:
            raise InputError(f"DWI {dwi.path}: {err}") from None
    if args.directions != "all" and dwi.bvec is None:
        raise InputError(f"DWI {dwi.path}: --directions {args.directions} needs a .bvec, none applies to it")
    sets, bvec_record = io.volume_sets(inputs, dwi.bvec, args.directions, args.b_tolerance, model.n_free(args.model))
    outputs = {label: io.bids_paths(args.output_dir, dwi.path, label if args.directions == "each" else None)
               for label, *_ in sets}
    for paths in outputs.values():
        io.check_bids_outputs(args.output_dir, paths.values(), True)
    records = {**inputs.records, "bvec": bvec_record, "dwi_json": [io.input_record(p) for p in dwi.json_files]}
    docs = []
    with io.staged_outputs([auto_path] if auto_path else []) as tmp:
        if auto_path:
            io.write_map(tmp[auto_path], inputs.selected.astype(np.float32), inputs.image)
            records["mask"] = {**io.input_record(tmp[auto_path]), "path": auto_path,
                               "abspath": os.path.abspath(auto_path)}
        for label, bvals, data, directions in sets:
            docs.append(fit_set(args, argv, dwi, inputs, records, outputs[label], bvals, data, directions, start))
    say(args, f"{dwi.name}: fitted {sum(d['counts']['fitted'] for d in docs)} voxels, "
              f"{sum(d['counts']['failed'] for d in docs)} failed, in {time.perf_counter() - start:.1f} s "
              f"(SNR at the lowest b {fmt(docs[0]['snr']['measured'])}, needed {fmt(docs[0]['snr']['required_median'])})")
    return docs


def fit_set(args, argv, dwi, inputs, records, paths, bvals, data, directions, start):
    """Fit one set of volumes of a DWI and write its maps; returns its sidecar (with ``_path``)."""
    ivim = cli.fitting_model(args, bvals, dwi.bval)
    fit = ivim.fit(data, inputs.selected, jobs=cli.fitting_jobs(args), progress=args.verbose >= 1 and sys.stderr.isatty(),
                   **args.fit_options)
    extra = {**io.provenance(PROG, argv), "inputs": records, "dwi_metadata": dwi.metadata,
             "bids_entities": dwi.entities, "voxel_selection": inputs.selection, "directions": directions,
             "snr": snr_record(ivim, data[inputs.selected], fit.RMSE[inputs.selected]),
             "run_time_s": round(time.perf_counter() - start, 3)}
    doc = fit.to_bids(args.output_dir, paths, affine=inputs.image, sidecar=extra)
    return {**doc, "_path": io.bids_fit_sidecar(paths["S0"])}


def fmt(value):
    """A number of the log line ('n/a' for None)."""
    return "n/a" if value is None else f"{value:.0f}"


AUTO_MASK_TEXT = ("Otsu threshold of the mean lowest-b image, its largest connected component (6-connected), "
                  "holes filled")


def otsu_threshold(values, bins=256):
    """The threshold maximising the between-class variance of ``values`` (Otsu, 1979)."""
    counts, edges = np.histogram(values, bins=bins)
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(counts)[:-1]
    w1 = counts.sum() - w0
    m0 = np.cumsum(counts * centres)[:-1] / np.maximum(w0, 1)
    m1 = (np.sum(counts * centres) - np.cumsum(counts * centres)[:-1]) / np.maximum(w1, 1)
    return edges[1:-1][np.argmax(w0 * w1 * (m0 - m1) ** 2)]


def auto_mask(data, bvals):
    """A brain/body mask (bool, x y z): see AUTO_MASK_TEXT.

    Raises
    ------
    InputError
        No finite, positive signal at the lowest b.
    """
    from scipy import ndimage

    lowest = data[..., bvals == bvals.min()]
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)          # a voxel with no finite sample: NaN
        image = np.nanmean(np.where(np.isfinite(lowest), lowest, np.nan), axis=3)
    finite = np.isfinite(image) & (image > 0)
    if finite.sum() < 2 or np.ptp(image[finite]) == 0:
        raise InputError("auto mask: no contrast in the lowest-b image (give --mask-dir or --mask none)")
    mask = finite & (image > otsu_threshold(image[finite]))
    labels, n = ndimage.label(mask)
    if n > 1:
        mask = labels == np.argmax(np.bincount(labels.ravel())[1:]) + 1
    return ndimage.binary_fill_holes(mask) & finite


def snr_record(ivim, signal, rmse):
    """The SNR at the lowest b measured on the fitted voxels and the SNR the protocol needs.

    Measured: the median over the voxels of the mean signal at the lowest b, over σ.  σ is the
    pooled scatter of the repeated b-values (:func:`ivim_common.model.repeat_noise_sd`, the root
    mean of each voxel's variance) where some b-value is repeated, else the fit's residuals:
    RSS/σ² of a voxel is about χ² with ν = n - k degrees of freedom (n b-values, k free
    parameters), so σ² is the median over voxels of RMSE²·n/ν divided by the median of χ²_ν/ν,
    (1 - 2/(9ν))³ (Wilson-Hilferty): robust to the few voxels the model does not fit.  Needed: the
    Cramér-Rao required SNR (:func:`ivim_common.design.required_snr_crlb`: mean |error| of f
    and f·D* within DEFAULT_MAX_ERROR %) over TISSUE_GRID, its median and 90th percentile.
    """
    bvals = ivim.bvals
    low = signal[:, bvals == bvals.min()].mean(axis=1)
    sd = model.repeat_noise_sd(bvals, signal)
    if sd is not None:
        sigma, how = float(np.sqrt(np.mean(sd ** 2))), "pooled scatter of the repeated b-values"
    else:
        n, k = bvals.size, model.n_free(ivim.approach)
        finite = rmse[np.isfinite(rmse)]
        nu = n - k
        sigma = (float(np.sqrt(np.median(finite ** 2) * n / nu / (1 - 2 / (9 * nu)) ** 3))
                 if finite.size and nu > 0 else None)
        how = ("fit residuals, median of RMSE^2 * n/(n-k) over the median of chi2(n-k)/(n-k) (no repeated "
               "b-value; misfit counts as noise, so the SNR is a lower bound)")
    measured = float(np.median(low) / sigma) if sigma else None
    approach = ivim.approach if ivim.approach in design.APPROACHES else "one-step"
    with np.errstate(all="ignore"):
        needed = design.required_snr_crlb(bvals, TISSUE_GRID, "FDstar", DEFAULT_MAX_ERROR, approach,
                                          ivim.bounds_version if approach == "one-step" else "2020")
    needed = needed[np.isfinite(needed)]
    return {"measured": measured, "sigma": sigma, "sigma_method": how,
            "required_median": float(np.median(needed)) if needed.size else None,
            "required_p90": float(np.percentile(needed, 90)) if needed.size else None,
            "required_definition": (f"Cramer-Rao bound ({approach}): f and f*D* with mean |error| <= "
                                    f"{DEFAULT_MAX_ERROR:g} %, over f 0.01-0.30, D* 3e-3-35e-3 mm^2/s, "
                                    "D 0.3e-3 and 1.5e-3 mm^2/s")}


# --------------------------------------------------------------------------- group level

def group_level(args, labels):
    """Write ``group_ivim.tsv`` and ``group_ivim.html`` from the fits of ``labels`` under
    OUTPUT_DIR; returns the number of rows."""
    tsv, html = (os.path.join(args.output_dir, n) for n in ("group_ivim.tsv", "group_ivim.html"))
    io.check_outputs([tsv, html], args.force)
    fits = {label: participant_fits(args.output_dir, label) for label in labels}
    missing = [f"sub-{label}" for label, docs in fits.items() if not docs]
    fits = [doc for docs in fits.values() for doc in docs]
    if not fits:
        raise InputError(f"output folder {args.output_dir}: no fit of the chosen participants "
                         "(run the participant level first)")
    rows, values = [], []
    for doc in fits:
        maps, fitted = load_fit_maps(doc)
        regions = {"mask": fitted}
        if args.dseg_dir:
            regions.update(dseg_regions(args.dseg_dir, doc, fitted))
        for roi, region in regions.items():
            rows.append(group_row(doc, roi, maps, region))
        values.append((doc, {k: maps[name][fitted] for k, name in GROUP_MAPS.items() if name in maps}))
    columns = group_columns(rows)
    with io.staged_outputs([tsv, html], args.force) as tmp:
        with open(tmp[tsv], "w", encoding="utf-8") as f:
            f.write("\t".join(columns) + "\n")
            for row in rows:
                f.write("\t".join(cell(row.get(c)) for c in columns) + "\n")
        report.write_group_report(tmp[html], rows, columns, values, missing)
    if missing:
        say(args, f"no fit of {len(missing)} participant(s): {', '.join(missing)}")
    say(args, f"wrote {len(rows)} rows to {tsv}, and {html}")
    return len(rows)


def participant_fits(root, label):
    """The fit sidecars (dicts with ``_path``) of a participant's DWIs under ``root``."""
    paths = sorted(glob.glob(os.path.join(root, f"sub-{label}", "**", "*_model-ivim*_dwimap.json"), recursive=True))
    out = []
    for path in paths:
        if io.bids_fit_sidecar(path) is None:           # the fit's sidecar, not a map's
            doc = io.read_sidecar(path)
            if doc and doc.get("maps"):
                out.append({**doc, "_path": path})
    return out


def load_fit_maps(doc):
    """The maps of a fit (float64, by name) and its fitted voxels (in the mask, not failed)."""
    maps, inside, _ = bids_dataset.read_fit(doc)
    return maps, inside & (maps["exception"] == 0)


def dseg_regions(deriv_root, doc, fitted):
    """``{label name: fitted voxels of that label}`` of the DWI's ``_dseg.nii.gz``."""
    source = doc["inputs"]["dwi"]["path"]
    dwi = bids_dataset.Dwi(source, bids_dataset.parse_name(source)[0])
    path = bids_dataset.find_derivative(deriv_root, dwi, "dseg", "segmentation")
    reference = io.load_on_grid(bids_dataset.fit_map_path(doc, "S0"), "S0 map", 3)[0]
    labels = np.rint(io.load_on_grid(path, "segmentation", 3, reference, "maps")[1]).astype(int)
    names = bids_dataset.read_dseg_labels(path, deriv_root)
    return {names.get(i, str(i)): fitted & (labels == i) for i in np.unique(labels[labels > 0])}


def group_row(doc, roi, maps, region):
    """One row of the group table: entities, region, voxels, median and IQR of each map,
    the share where IVIM is preferred and the share at a bound."""
    entities = doc.get("bids_entities") or bids_dataset.parse_name(doc["inputs"]["dwi"]["path"])[0]
    index = (doc.get("directions") or {}).get("direction_index")
    row = {"participant_id": f"sub-{entities['sub']}",
           "session_id": f"ses-{entities['ses']}" if "ses" in entities else None,
           **{k: v for k, v in entities.items() if k not in ("sub", "ses")},
           **({"desc": f"dir{index}"} if index else {}),
           "roi": roi, "n_voxels": int(region.sum())}
    stats = io.median_iqr({c: maps[name][region] if name in maps else np.empty(0) for c, name in GROUP_MAPS.items()},
                          slice(None))
    for column, stat in stats.items():
        q25, q75 = stat["iqr"]
        row[f"{column}_median"], row[f"{column}_iqr"] = stat["median"], None if q25 is None else q75 - q25
    for column, name, test in (("share_ivim", "model_choice", lambda v: v >= 0.5),
                               ("share_at_bound", "bounds_hit", lambda v: v > 0)):
        values = maps[name][region] if name in maps else np.empty(0)
        values = values[np.isfinite(values)]
        row[column] = float(test(values).mean()) if values.size else None
    return row


def group_columns(rows):
    """participant_id, session_id, the other entities any row has (in the specification's
    order), desc where directions were fitted apart, then STAT_COLUMNS."""
    present = {k for row in rows for k in row} - set(STAT_COLUMNS) - {"participant_id", "session_id", "desc"}
    entities = ([k for k in bids_dataset.DWI_ENTITIES if k in present]
                + sorted(present - set(bids_dataset.DWI_ENTITIES)))
    return ["participant_id", "session_id", *entities, *(["desc"] if any("desc" in r for r in rows) else []),
            *STAT_COLUMNS]


def cell(value):
    """A TSV cell: n/a for a missing value, numbers with 6 significant digits."""
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "n/a"
    if isinstance(value, (float, np.floating)):
        return f"{value:.6g}"
    return str(value)
