"""A spatially structured IVIM phantom: tissue regions with sharp edges, smooth variation of f, D
and D*ₚ inside each region, partial volume at the edges, Rician noise.

Two cases, in the OSIPI convention (D*ₚ = D + D*, the perfusing pool's own coefficient):

- ``brain``: white matter (an ellipse) with a deep grey nucleus (a disc) inside, in a cortical
  grey-matter ring; f 0.03-0.05, D*ₚ 0.07-0.09 mm²/s; 17 b-values up to 900;
- ``abdomen``: liver with a kidney (cortex around medulla); f 0.10-0.28; 12 b-values up to 800.

Each tissue's f, D and D*ₚ vary linearly between the ranges of :data:`CASES` across the volume
(f along x, D along y, D*ₚ along x + y).  Each voxel is the mean of SUPER² sub-voxels in-plane
(partial volume at the edges: its signal is the mean of their signals, its truth the mean of
their parameters); ``edge`` marks the voxels whose sub-voxels are of more than one tissue.
"""
import numpy as np

BVALS = {
    "brain": np.array([0, 10, 20, 30, 40, 50, 60, 80, 100, 150, 200, 300, 400, 500, 600, 750, 900], float),
    "abdomen": np.array([0, 10, 20, 30, 50, 75, 100, 150, 200, 400, 600, 800], float),
}
# tissue: (f range, D range in mm²/s, D*ₚ range in mm²/s); label 0 is outside (not in the mask)
CASES = {
    "brain": {1: ("white matter", (0.030, 0.045), (0.68e-3, 0.78e-3), (0.070, 0.080)),
              2: ("grey matter", (0.035, 0.050), (0.85e-3, 0.95e-3), (0.080, 0.090)),
              3: ("deep grey", (0.040, 0.050), (0.78e-3, 0.82e-3), (0.075, 0.085))},
    "abdomen": {1: ("liver", (0.20, 0.28), (1.00e-3, 1.20e-3), (0.050, 0.070)),
                2: ("renal cortex", (0.15, 0.20), (1.90e-3, 2.10e-3), (0.030, 0.040)),
                3: ("renal medulla", (0.10, 0.14), (1.60e-3, 1.80e-3), (0.025, 0.035))},
}
SUPER = 4           # sub-voxels per voxel along each in-plane axis
S0 = 1000.0


def labels(case, nx, ny):
    """Tissue labels (nx·SUPER, ny·SUPER) of the case's in-plane geometry."""
    u, v = np.meshgrid((np.arange(nx * SUPER) + 0.5) / (nx * SUPER), (np.arange(ny * SUPER) + 0.5) / (ny * SUPER),
                       indexing="ij")
    lab = np.zeros(u.shape, dtype=np.int64)
    if case == "brain":
        lab[((u - 0.5) / 0.46) ** 2 + ((v - 0.5) / 0.42) ** 2 <= 1] = 2
        lab[((u - 0.5) / 0.36) ** 2 + ((v - 0.5) / 0.32) ** 2 <= 1] = 1
        lab[(u - 0.42) ** 2 + (v - 0.55) ** 2 <= 0.12 ** 2] = 3
    else:
        lab[((u - 0.45) / 0.44) ** 2 + ((v - 0.5) / 0.45) ** 2 <= 1] = 1
        kidney = ((u - 0.68) / 0.2) ** 2 + ((v - 0.5) / 0.3) ** 2
        lab[kidney <= 1] = 2
        lab[kidney <= 0.45] = 3
    return lab, u, v


def phantom(case, snr, seed, shape=(48, 48, 3)):
    """A seeded phantom.

    Returns
    -------
    dict with bvals (n_b,), signal (*shape, n_b), truth (*shape, 3: D, f, D*ₚ; NaN outside),
    mask, edge (bool, shape), tissue (shape: the majority tissue, 0 outside), names {label: name}.
    """
    nx, ny, nz = shape
    bvals = BVALS[case]
    lab, u, v = labels(case, nx, ny)
    params = np.zeros(lab.shape + (3,))
    for label, (_, f_rng, d_rng, p_rng) in CASES[case].items():
        inside = lab == label
        ramp = lambda rng, t: rng[0] + (rng[1] - rng[0]) * t        # noqa: E731
        params[inside] = np.column_stack([ramp(d_rng, v[inside]), ramp(f_rng, u[inside]),
                                          ramp(p_rng, 0.5 * (u[inside] + v[inside]))])
    d, f, p = (params[..., k] for k in range(3))
    sub = S0 * ((1 - f)[..., None] * np.exp(-bvals * d[..., None]) + f[..., None] * np.exp(-bvals * p[..., None]))
    sub[lab == 0] = 0.0

    def block_mean(x):
        return x.reshape(nx, SUPER, ny, SUPER, *x.shape[2:]).mean(axis=(1, 3))

    inside_frac = block_mean((lab > 0).astype(float))
    mask2 = inside_frac == 1.0                      # voxels wholly inside the body
    clean = block_mean(sub)
    truth = block_mean(params) / np.maximum(inside_frac, 1e-12)[..., None]
    counts = np.stack([block_mean((lab == k).astype(float)) for k in range(len(CASES[case]) + 1)], axis=-1)
    edge2 = mask2 & (counts[..., 1:].max(axis=-1) < 1.0)
    tissue2 = np.where(mask2, counts.argmax(axis=-1), 0)

    rng = np.random.default_rng(seed)
    sigma = S0 / snr
    clean = np.broadcast_to(clean[:, :, None], (nx, ny, nz, bvals.size))
    signal = np.hypot(clean + rng.normal(0, sigma, clean.shape), rng.normal(0, sigma, clean.shape))
    expand = lambda x: np.repeat(x[:, :, None], nz, axis=2)          # noqa: E731
    mask = expand(mask2)
    return {"bvals": bvals, "signal": signal, "truth": np.where(mask[..., None], expand(truth), np.nan),
            "mask": mask, "edge": expand(edge2), "tissue": expand(tissue2),
            "names": {k: v[0] for k, v in CASES[case].items()}}
