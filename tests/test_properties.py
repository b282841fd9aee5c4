"""Property-based tests (hypothesis) of the parts that meet the outside world: the b-value reader,
the image and mask checks, and the fitters.  Example counts are modest so the suite stays fast."""
import os
import tempfile

import nibabel as nib
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import AFFINE, BVALS
from ivim_common import IvimModel, io, model
from ivim_common.errors import InputError

SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _one_line(exc):
    assert "\n" not in str(exc) and str(exc).strip(), repr(str(exc))


# --------------------------------------------------------------------------- b-value reader

NUMBER = st.one_of(st.integers(-10, 5000).map(str),
                   st.floats(allow_nan=True, allow_infinity=True).map(repr),
                   st.sampled_from(["1e3", "0", "-0", "nan", "inf", "1_000", "0x10", ""]))
SEPARATOR = st.sampled_from([" ", ",", "\t", ", ", "\n", "\r\n", "  ", "\u00a0", "\u3000", ",,", "\x1f"])


@st.composite
def bval_texts(draw):
    """Text that looks like a b-value file (numbers, separators, odd bytes), or any text."""
    if draw(st.booleans()):
        return draw(st.text(max_size=60))
    tokens = draw(st.lists(NUMBER, max_size=15))
    seps = draw(st.lists(SEPARATOR, min_size=len(tokens) + 1, max_size=len(tokens) + 1))
    text = "".join(s + t for s, t in zip(seps, tokens)) + seps[-1]
    return ("\ufeff" if draw(st.booleans()) else "") + text


@settings(max_examples=300, **SETTINGS)
@given(text=bval_texts())
def test_bval_reader_parses_or_raises_one_line(text):
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "b.bval")
        with open(path, "w", encoding="utf-8", newline="") as f:
            f.write(text)
        try:
            bvals = io.read_bvals(path)
        except InputError as exc:
            _one_line(exc)
            return
    assert bvals.ndim == 1 and bvals.size >= 1
    assert np.isfinite(bvals).all() and (bvals >= 0).all()


@settings(max_examples=100, **SETTINGS)
@given(values=st.lists(st.floats(0, 1e4, allow_nan=False), min_size=1, max_size=30),
       sep=st.sampled_from([" ", ",", "\t", "\n", ", "]), bom=st.booleans())
def test_bval_reader_reads_back_what_was_written(values, sep, bom):
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "b.bval")
        with open(path, "w", encoding="utf-8-sig" if bom else "utf-8") as f:
            f.write(sep.join(repr(v) for v in values) + "\n")
        np.testing.assert_array_equal(io.read_bvals(path), values)


# --------------------------------------------------------------------------- images and masks

DTYPES = [np.uint8, np.int8, np.int16, np.uint16, np.int32, np.int64, np.float32, np.float64,
          np.complex64, np.complex128, np.dtype([("R", "u1"), ("G", "u1"), ("B", "u1")])]


@st.composite
def images(draw, ndim=None):
    """(data, affine, slope) of a small random NIfTI image: shape, data type, values, affine."""
    ndim = ndim or draw(st.integers(1, 5))
    shape = tuple(draw(st.lists(st.integers(1, 4), min_size=ndim, max_size=ndim)))
    dtype = np.dtype(draw(st.sampled_from(DTYPES)))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if dtype.names:
        data = np.zeros(shape, dtype)
    elif dtype.kind == "c":
        data = (rng.normal(size=shape) + 1j * rng.normal(size=shape)).astype(dtype)
    elif dtype.kind == "f":
        data = rng.normal(100, 50, size=shape).astype(dtype)
        data.flat[:draw(st.integers(0, 2))] = draw(st.sampled_from([np.nan, np.inf, -np.inf, 0.0]))
    else:
        info = np.iinfo(dtype)
        data = rng.integers(max(info.min, -1000), min(info.max, 1000), size=shape, endpoint=True).astype(dtype)
    affine = np.eye(4)
    affine[:3] = (np.reshape(draw(st.lists(st.floats(-100, 100), min_size=12, max_size=12)), (3, 4))
                  if draw(st.booleans()) else AFFINE[:3])
    slope = draw(st.sampled_from([None, 0.5, 2.0, 1e-3])) if dtype.kind in "iu" else None
    return data, affine, slope


def _save(data, affine, slope, path):
    image = nib.Nifti1Image(data, None, dtype=data.dtype)
    image.set_sform(affine, code=1)     # any matrix, singular too (a qform must be a rotation)
    if slope is not None:
        image.header.set_slope_inter(slope, 10.0)
    nib.save(image, path)
    return path


@settings(max_examples=150, **SETTINGS)
@given(image=images())
def test_image_loads_as_real_float64_or_raises_one_line(image):
    data, affine, slope = image
    with tempfile.TemporaryDirectory() as folder:
        path = _save(data, affine, slope, os.path.join(folder, "img.nii"))
        try:
            loaded, values = io.load_nifti(path, "DWI")
        except InputError as exc:
            _one_line(exc)
            assert data.dtype.kind == "c" or data.dtype.names, str(exc)  # only non-real types refused
            return
    assert data.dtype.kind in "iuf"
    assert values.dtype == np.float64 and values.shape == data.shape
    expected = data.astype(np.float64) * (slope or 1.0) + (10.0 if slope else 0.0)
    np.testing.assert_allclose(values, expected, rtol=1e-6)


@settings(max_examples=80, **SETTINGS)
@given(mask=images(ndim=3), dwi_shape=st.tuples(st.integers(1, 4), st.integers(1, 4), st.integers(1, 4)),
       same_affine=st.booleans())
def test_fit_inputs_with_any_mask_are_consistent_or_one_line(mask, dwi_shape, same_affine):
    data, affine, slope = mask
    if same_affine:
        affine = AFFINE
    rng = np.random.default_rng(0)
    dwi = rng.uniform(50, 500, size=dwi_shape + (BVALS.size,)).astype(np.float32)
    with tempfile.TemporaryDirectory() as folder:
        dwi_path = _save(dwi, AFFINE, None, os.path.join(folder, "dwi.nii"))
        mask_path = _save(data, affine, slope, os.path.join(folder, "mask.nii"))
        bval_path = os.path.join(folder, "b.txt")
        with open(bval_path, "w") as f:
            f.write(" ".join(map(str, BVALS)))
        try:
            inputs = io.load_fit_inputs(dwi_path, bval_path, mask_path)
        except InputError as exc:
            _one_line(exc)
            return
    assert inputs.selected.shape == dwi_shape and inputs.selected.any()
    assert inputs.data.shape == dwi_shape + (BVALS.size,)
    assert inputs.data[inputs.selected].shape == (inputs.selected.sum(), BVALS.size)


# --------------------------------------------------------------------------- fitters

@st.composite
def acquisitions(draw, max_voxels=8):
    """(bvals, signal): 4-12 b-values (>= 4 distinct, >= 0) and finite, positive signals over
    many orders of magnitude, shaped like an IVIM decay or not at all."""
    distinct = draw(st.lists(st.integers(0, 3000), min_size=4, max_size=12, unique=True))
    bvals = np.array(sorted(distinct + draw(st.lists(st.sampled_from(distinct), max_size=3))), dtype=float)
    n = draw(st.integers(1, max_voxels))
    positive = st.floats(1e-30, 1e30, allow_nan=False, allow_infinity=False, allow_subnormal=False)
    if draw(st.booleans()):
        signal = np.array(draw(st.lists(st.lists(positive, min_size=bvals.size, max_size=bvals.size),
                                        min_size=n, max_size=n)))
    else:
        params = [draw(st.floats(1e-3, 1e6)), draw(st.floats(1e-5, 5e-3)), draw(st.floats(0, 0.5)),
                  draw(st.floats(1e-3, 0.1))]
        noise = np.array(draw(st.lists(st.floats(0.5, 1.5), min_size=bvals.size, max_size=bvals.size)))
        signal = np.tile(model.ivim_signal(bvals, *params) * noise, (n, 1))
    return bvals, signal


def _check_fit(bvals, signal, approach, bounds_version, engine):
    """Through the public API: every voxel either failed (NaN, exception 1) or has finite values
    inside the box it may reach: the nominal bounds widened by the ±5 % refinement (f up to
    0.05 from f = 0) for least squares; for the Bayesian engine, the box of its posterior (its
    D support from the prior; S0 is not bounded there)."""
    try:
        fitter = IvimModel(bvals, approach, bounds_version, engine)
    except ValueError as err:          # b-values that cannot give D's line: refused up front, one line
        assert approach != "one-step" and "takes D from the line" in str(err) and "\n" not in str(err)
        return
    out = fitter.fit(signal).maps
    failed = out["exception"] == 1
    assert set(np.unique(out["exception"])) <= {0.0, 1.0}
    for name in model.PARAM_NAMES + ("FivimXDstar",):
        assert np.isnan(out[name][failed]).all(), name
        assert np.isfinite(out[name][~failed]).all(), name
    ok = ~failed
    if ok.any():
        cfg = model.settings(approach, bounds_version)
        dinit, s0_1mf = model.initial_estimate(bvals, signal[ok], cfg["bval_threshold"])
        init, lo, hi, vary = model.nominal_bounds(approach, bounds_version, dinit, s0_1mf)
        if engine == "bayes":
            from ivim_common.engines import bayes

            lo, hi = bayes.prior_box(np.where(vary, lo, init), np.where(vary, hi, init), bayes.uniform_prior())
            lo[:, 0], hi[:, 0] = -np.inf, np.inf
        else:
            scale = np.where(vary, model.REFINE, 0.0)
            lo, hi = lo * (1 - scale), hi * (1 + scale)
            hi[:, 2] = np.maximum(hi[:, 2], model.REFINE_F_ZERO[1])
        params = np.column_stack([out[name][ok] for name in model.PARAM_NAMES])
        tol = 1e-9 * np.abs(np.where(np.isfinite(hi), hi, 0))
        assert (params >= lo - tol).all() and (params <= hi + tol).all(), (params, lo, hi)


@settings(max_examples=150, **SETTINGS)
@given(acquisition=acquisitions(), approach=st.sampled_from([("one-step", "2020"), ("one-step", "2019"),
                                                             ("two-step", "2020")]))
def test_fast_fit_of_any_positive_signal_is_bounded_or_failed(acquisition, approach):
    with np.errstate(all="ignore"):
        _check_fit(*acquisition, *approach, engine="fast")


@pytest.mark.slow
@settings(max_examples=6, **SETTINGS)
@given(acquisition=acquisitions(max_voxels=1))
def test_lmfit_fit_of_any_positive_signal_is_bounded_or_failed(acquisition):
    with np.errstate(all="ignore"):
        _check_fit(*acquisition, "one-step", "2020", engine="lmfit")


@settings(max_examples=60, **SETTINGS)
@given(acquisition=acquisitions(), approach=st.sampled_from([("one-step", "2020"), ("two-step", "2020")]))
def test_bayes_fit_of_any_positive_signal_is_bounded_or_failed(acquisition, approach):
    with np.errstate(all="ignore"):
        _check_fit(*acquisition, *approach, engine="bayes")
