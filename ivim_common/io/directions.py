"""b-vectors and the ``--directions`` modes: the b-vector file beside the DWI, shells, one label
per direction, and the sets of volumes each mode fits."""
import os
import re

import numpy as np

from ..errors import InputError
from .inputs import check_readable
from .provenance import input_record


B_TOLERANCE_FRACTION, B_TOLERANCE_MIN = 0.02, 1.0   # default --b-tolerance: 2 % of b, >= 1 s/mm²
SAME_DIRECTION_COS = 0.999                           # |cos| of two vectors of one direction (2.6°)
UNIT_NORM_TOLERANCE = 0.02                           # | |g| - 1 | allowed on a non-zero b


def find_beside(dwi_path, ext):
    """The ``.bval``/``.bvec`` file beside a DWI (``ext`` 'bval' or 'bvec'), or None.

    BIDS and FSL name it after the image (``sub-01_dwi.nii.gz`` -> ``sub-01_dwi.bval``); FSL's
    dtifit folders call it ``bvals``/``bvecs``.  The first that exists is returned.
    """
    folder, name = os.path.split(dwi_path)
    stem = re.sub(r"\.nii(\.gz)?$", "", name)
    for candidate in (f"{stem}.{ext}", f"{ext}s"):
        path = os.path.join(folder, candidate)
        if os.path.exists(path):
            return path
    return None


def b_shells(bvals, tolerance=None):
    """The b-value of each volume's shell: b-values within the tolerance of each other are one
    b-value (their mean), and those within it of 0 are 0.

    Parameters
    ----------
    bvals : array_like (n,)
    tolerance : float, str or None
        s/mm², or a percentage of b such as '2%'; None: 2 % of b, at least 1 s/mm².

    Returns
    -------
    ndarray (n,)

    Examples
    --------
    >>> b_shells([0, 0.5, 5, 10, 15, 20, 795, 800, 805]).tolist()
    [0.0, 0.0, 5.0, 10.0, 15.0, 20.0, 800.0, 800.0, 800.0]
    """
    b = np.asarray(bvals, dtype=float)

    def tol(value):
        if tolerance is None:
            return max(B_TOLERANCE_FRACTION * value, B_TOLERANCE_MIN)
        if isinstance(tolerance, str):
            return float(tolerance.rstrip("%")) / 100 * value
        return float(tolerance)

    order = np.argsort(b, kind="stable")
    shells, groups = np.empty_like(b), [[order[0]]] if b.size else []
    for i in order[1:]:
        first = b[groups[-1][0]]
        (groups[-1].append(i) if b[i] - first <= tol(max(first, b[i])) else groups.append([i]))
    for members in groups:
        value = b[members].mean()
        shells[members] = 0.0 if b[members].min() <= tol(0.0) else value
    return shells


def read_bvecs(path, bvals, tolerance=None):
    """Read an FSL gradient table (3 rows, one column per volume) and check it against bvals.

    Returns
    -------
    ndarray (3, n_volumes)

    Raises
    ------
    InputError
        Not 3 rows of numbers, a column count different from the b-values', a zero or
        non-unit vector on a non-zero b.
    """
    check_readable(path, "b-vector file")
    try:
        with open(path, encoding="utf-8") as f:
            rows = [re.split(r"[\s,]+", line.strip(", \t\r\n")) for line in f if line.strip(", \t\r\n")]
        bvecs = np.array([[float(v) for v in row] for row in rows])
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise InputError(f"b-vector file {path}: cannot read it as rows of numbers ({exc})") from None
    if bvecs.ndim == 2 and bvecs.shape[1] == 3 and bvecs.shape[0] != 3:
        bvecs = bvecs.T                          # one vector per row (MRtrix-like): accepted too
    if bvecs.ndim != 2 or bvecs.shape[0] != 3:
        raise InputError(f"b-vector file {path}: expected 3 rows (x, y, z), one column per volume")
    if bvecs.shape[1] != len(bvals):
        raise InputError(f"b-vector file {path}: {bvecs.shape[1]} vectors but {len(bvals)} b-values/volumes")
    if not np.isfinite(bvecs).all():
        raise InputError(f"b-vector file {path}: non-finite value")
    norms = np.linalg.norm(bvecs, axis=0)
    bad = (b_shells(bvals, tolerance) > 0) & (np.abs(norms - 1) > UNIT_NORM_TOLERANCE)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise InputError(f"b-vector file {path}: volume {i} (b = {bvals[i]:g}) has a "
                         f"{'zero' if norms[i] == 0 else f'non-unit (norm {norms[i]:.3g})'} vector")
    return bvecs


def direction_labels(bvecs, shells):
    """Direction of each volume (0, 1, ...; -1 at b = 0) and the directions' unit vectors:
    vectors within 2.6° of each other, or of each other's opposite, are one direction."""
    labels, units = np.full(len(shells), -1), []
    for i in np.flatnonzero(np.asarray(shells) > 0):
        g = bvecs[:, i] / np.linalg.norm(bvecs[:, i])
        match = [k for k, u in enumerate(units) if abs(u @ g) >= SAME_DIRECTION_COS]
        if match:
            labels[i] = match[0]
        else:
            labels[i] = len(units)
            units.append(g)
    return labels, np.array(units).reshape(-1, 3)


def _geometric_mean(data, axis=-1):
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.exp(np.log(np.where(data > 0, data, np.nan)).mean(axis=axis))


def direction_sets(data, bvals, bvecs, mode, tolerance=None, n_free=4, bvec_path="b-vector file"):
    """The signal to fit for ``--directions``: a list of ``(label, bvals, data, record)``.

    'all': the volumes as they are (one set, label None).  'trace': one set ('trace') whose
    volume at each shell is the geometric mean over its directions of each direction's
    geometric mean over its repeats (for IVIM with isotropic perfusion exactly
    S0·e^(-b·mean D)·(f·e^(-b·D*) + 1 - f) where every direction is there); a shell with some
    directions only is averaged over those it has (listed in the record), one with a single
    direction is an error.  'each': one set per direction ('dir1', ...), the b = 0 volumes with
    that direction's volumes.  b-values are grouped by :func:`b_shells`.  Non-positive samples
    make the combined sample NaN (the voxel is then marked failed).
    """
    if mode == "all":
        return [(None, np.asarray(bvals, dtype=float), data, {"mode": "all"})]
    shells = b_shells(bvals, tolerance)
    labels, units = direction_labels(bvecs, shells)
    tol_text = "2% of b, at least 1 s/mm^2" if tolerance is None else str(tolerance)
    record = {"mode": mode, "b_tolerance": tol_text,
              "directions": units.round(6).tolist(), "shells": sorted(set(shells.tolist()))}
    zero = shells == 0
    if mode == "trace":
        out_b, volumes, partial = [], [], {}
        if zero.any():
            out_b.append(0.0)
            volumes.append(_geometric_mean(data[..., zero]))
        for b in sorted(set(shells[~zero].tolist())):
            here = [k for k in range(len(units)) if ((shells == b) & (labels == k)).any()]
            if len(here) < 2:
                raise InputError(f"{bvec_path}: --directions trace, b = {b:g} has a single direction "
                                 "(the trace needs at least 2)")
            if len(here) < len(units):
                partial[f"{b:g}"] = len(here)
            per_dir = [_geometric_mean(data[..., (shells == b) & (labels == k)]) for k in here]
            out_b.append(b)
            volumes.append(_geometric_mean(np.stack(per_dir, axis=-1)))
        record["shells_with_some_directions_only"] = partial or None
        return [("trace", np.array(out_b), np.stack(volumes, axis=-1), record)]
    sets = []
    for k, unit in enumerate(units):
        pick = zero | (labels == k)
        if np.unique(shells[pick]).size < n_free:
            raise InputError(f"{bvec_path}: --directions each, direction {k + 1} ({unit.round(3).tolist()}) "
                             f"has {np.unique(shells[pick]).size} distinct b-values with b = 0, the fit needs "
                             f"at least {n_free}")
        sets.append((f"dir{k + 1}", shells[pick], data[..., pick],
                     {**record, "direction": unit.round(6).tolist(), "direction_index": k + 1}))
    return sets


def volume_sets(inputs, bvec_path, mode, tolerance, n_free):
    """:func:`direction_sets` of loaded inputs (:class:`ivim_common.io.inputs.FitInputs`), the
    b-vectors read from ``bvec_path`` where ``mode`` needs them; returns ``(sets, bvec record)``,
    the record None where no b-vector file was read."""
    bvecs = None if mode == "all" else read_bvecs(bvec_path, inputs.bvals, tolerance)
    sets = direction_sets(inputs.data, inputs.bvals, bvecs, mode, tolerance, n_free, bvec_path)
    return sets, None if bvecs is None else input_record(bvec_path)
