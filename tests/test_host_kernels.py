"""The fused host kernel (`host_kernels.label_block`) against NumPy's argmin and near-tie count, and
the engine's results with and without it, bit for bit."""
import shutil
import types

import numpy as np
import pytest

from kmeans_partition.runner import host_kernels as hk
from kmeans_partition.runner import host_sums
from kmeans_partition.runner import kmeans as km
from kmeans_partition.runner import ties
from kmeans_partition.runner.lloyd import lloyd_partial

needs_kernel = pytest.mark.skipif(hk.library() is None, reason="the host kernel extension was not built here")


def reference(scores, slack):
    """NumPy: lowest-index argmin, its score, and whether another score is within the float32 limit."""
    labels = np.argmin(scores, axis=1).astype(np.int32)
    first = np.take_along_axis(scores, labels[:, None].astype(np.int64), axis=1)[:, 0]
    limit = np.nextafter((first.astype(np.float64) + slack).astype(np.float32), np.float32(np.inf))
    near = (scores <= limit[:, None]).sum(axis=1) > 1
    return labels, first, near


def run_kernel(scores, slack):
    m = scores.shape[0]
    labels, first, near = np.full(m, -1, np.int32), np.full(m, np.nan, np.float32), np.zeros(m, np.bool_)
    n_near = hk.label_block(scores, slack, labels, first, near)
    return labels, first, near, n_near


def test_the_kernel_is_built_wherever_a_c_compiler_is():
    """The install (scripts/setup.sh, CI's too) builds the kernel where a C compiler exists, so the
    suite runs the fused path there; only a machine without one runs the NumPy path alone."""
    compiler = shutil.which("cc") or shutil.which("gcc")
    assert hk.library() is not None or compiler is None, (
        f"{compiler} exists but the host kernel was not built or failed its check: reinstall (scripts/setup.sh)")


@needs_kernel
@pytest.mark.parametrize("k", [1, 2, 15, 16, 17, 31, 32, 33, 100, 257, 1000])
@pytest.mark.parametrize("m", [0, 1, 7, 300])
def test_labels_scores_and_near_ties_equal_numpy(k, m):
    rng = np.random.default_rng(k * 1000 + m)
    scores = rng.standard_normal((m, k)).astype(np.float32)
    if k > 3 and m > 3:
        scores[1, k - 1] = scores[1, 2] = scores[1].min() - 1  # an exact tie: lowest index wins
        scores[2, :] = 0.0
        scores[2, k // 2] = -0.0  # signed zeros compare equal
        scores[3, 3] = np.nextafter(scores[3].min(), np.float32(-np.inf))  # a near tie one ulp apart
    slack = rng.uniform(0, 0.05, m) if m else np.empty(0)
    labels, first, near, n_near = run_kernel(scores, slack)
    want_labels, want_first, want_near = reference(scores, slack)
    np.testing.assert_array_equal(labels, want_labels)
    np.testing.assert_array_equal(first.view(np.int32), want_first.view(np.int32))  # bits, signed zeros too
    np.testing.assert_array_equal(near, want_near)
    assert n_near == int(want_near.sum())
    if k > 3 and m > 3:
        assert labels[1] == 2 and near[1] and near[3]


@needs_kernel
def test_without_slack_only_labels_and_scores():
    scores = np.array([[2.0, -1.0, -1.0]], dtype=np.float32)
    labels, first = np.empty(1, np.int32), np.empty(1, np.float32)
    assert hk.label_block(scores, None, labels, first, None) == 0
    assert labels[0] == 1 and first[0] == -1.0


@needs_kernel
@pytest.mark.parametrize("bad, name", [
    (lambda s, l, f, t: (s.astype(np.float64), l, f, t), "scores"),
    (lambda s, l, f, t: (np.asfortranarray(s), l, f, t), "scores"),
    (lambda s, l, f, t: (s, l.astype(np.int64), f, t), "labels"),
    (lambda s, l, f, t: (s, l, f[:2], t), "first"),
    (lambda s, l, f, t: (s, l, f, t.astype(np.uint8)), "tie"),
])
def test_wrong_arrays_are_refused_by_name(bad, name):
    scores = np.zeros((3, 4), np.float32)
    args = bad(scores, np.empty(3, np.int32), np.empty(3, np.float32), np.empty(3, np.bool_))
    with pytest.raises(ValueError, match=name):
        hk.label_block(args[0], np.zeros(3), args[1], args[2], args[3])


def test_a_library_that_labels_wrong_is_not_used():
    def wrong(scores, m, k, slack, labels, first, tie):
        return 0  # leaves the outputs unwritten
    assert hk._checked(types.SimpleNamespace(kp_label_block=wrong)) is None
    assert hk._checked(None) is None


def blobs(n, d, k, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((k, d)).astype(np.float32)
    x = centres[rng.integers(0, k, n)] + 0.3 * rng.standard_normal((n, d)).astype(np.float32)
    x = np.vstack([x, x[:50]])  # duplicate rows: exact ties between duplicated centroids below
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    c = x[rng.choice(x.shape[0], k, replace=False)].copy()
    c[1] = c[0]  # two identical centroids: every row near them is a tie
    return x, c


@needs_kernel
@pytest.mark.parametrize("k", [40, 300])
def test_lloyd_step_and_labels_are_the_same_with_and_without_the_kernel(monkeypatch, k):
    x, c = blobs(6000, 48, k)
    xa, x_sq, ca = km.augment_rows(x), km.row_sq_norms(x), km.augment_centroids(c)
    real, found = ties.TieRule.label_fused, []
    monkeypatch.setattr(ties.TieRule, "label_fused", lambda self, *a: found.append(real(self, *a)) or found[-1])
    step_kernel, _ = lloyd_partial(xa, x_sq, c, 1024)
    labels_kernel, dist_kernel = km.nearest(xa, x_sq, ca, 700, centroids=c)
    assert found and any(f is not None for f in found), "the fused path decided no near tie"
    monkeypatch.setattr(hk, "library", lambda: None)
    found.clear()
    step_numpy, _ = lloyd_partial(xa, x_sq, c, 1024)
    labels_numpy, dist_numpy = km.nearest(xa, x_sq, ca, 700, centroids=c)
    assert not found
    for field in ("sums", "counts", "far_dist", "far_rows"):
        np.testing.assert_array_equal(getattr(step_kernel, field), getattr(step_numpy, field), err_msg=field)
    assert step_kernel.inertia == step_numpy.inertia
    np.testing.assert_array_equal(labels_kernel, labels_numpy)
    np.testing.assert_array_equal(dist_kernel, dist_numpy)
    exact = ((x.astype(np.float64)[:, None, :] - c.astype(np.float64)[None, :, :]) ** 2).sum(axis=2)
    np.testing.assert_array_equal(labels_kernel, np.argmin(exact, axis=1))  # the float64 reference


@needs_kernel
@pytest.mark.parametrize("n, c, k", [(0, 5, 3), (1, 1, 1), (5000, 129, 40), (20000, 385, 7)])
def test_segment_sum_equals_the_scipy_kernel_bit_for_bit(monkeypatch, n, c, k):
    rng = np.random.default_rng(n + c)
    rows = rng.standard_normal((n, c)).astype(np.float32)
    labels = rng.integers(0, k, n).astype(np.int32)
    fused = hk.segment_sum(labels, rows, k)
    monkeypatch.setattr(hk, "library", lambda: None)
    assert hk.segment_sum(labels, rows, k) is None
    scipy_sums = host_sums.segment_sum(labels, rows, k)  # scipy's CSC kernel now
    np.testing.assert_array_equal(fused, scipy_sums)
    exact = np.zeros((k, c))
    np.add.at(exact, labels, rows.astype(np.float64))
    np.testing.assert_allclose(fused, exact, rtol=1e-4, atol=1e-3)  # float32 sums near the float64 reference


@needs_kernel
def test_segment_sum_refuses_a_label_out_of_range_and_leaves_other_dtypes_to_scipy():
    rows = np.ones((3, 2), np.float32)
    with pytest.raises(ValueError, match="label 5 outside"):
        hk.segment_sum(np.array([0, 5, 1], np.int32), rows, 3)
    with pytest.raises(ValueError, match="label -1 outside"):
        hk.segment_sum(np.array([0, -1, 1], np.int32), rows, 3)
    assert hk.segment_sum(np.array([0, 2, 1], np.int64), rows, 3) is None
    assert hk.segment_sum(np.array([0, 2, 1], np.int32), rows.astype(np.float64), 3) is None
