"""The k-means|| worker tasks of `fit.DaskKMeans` (Bahmani et al.): distances to the candidates so
far, the sampling cost, the oversampling, the candidates' weights and their reduction to k centroids.
Each runs on the workers, on the partitions' array library (`backend.py`); results come back as NumPy.
"""

from __future__ import annotations

import numpy as np

from . import backend as be
from . import kmeans as km
from . import partition as partition_module
from .partition import Partition
from .worker_memory import relax_malloc_trim, release_freed

#: Float32 entries of one rows x candidates distance block in the sampling passes on a GPU (128 MB;
#: on NumPy `backend.HOST_BLOCK_ENTRIES`, 16 MB); with ~2k candidates per round a whole ``batch``
#: of rows would need gigabytes at large k.
CANDIDATE_BLOCK_ENTRIES = 1 << 25


def nearest_candidate(part: Partition, state, own, cands: np.ndarray, offset: int, batch: int):
    """Update (min squared distance, index of nearest candidate) with new candidates.

    ``own``: (local rows, candidate index of the first) of this partition's rows among ``cands``.
    Those rows are their own nearest candidate at distance 0, and rows already at distance 0 cannot
    get closer, so neither is computed: at large k the candidates are a sizeable share of the rows.
    """
    relax_malloc_trim()
    xp = be.namespace(part.xa)
    dev = be.device(part.xa)
    entries = be.HOST_BLOCK_ENTRIES if be.is_numpy(xp) else CANDIDATE_BLOCK_ENTRIES
    rows = max(1, min(batch, entries // max(len(cands), 1)))
    ca = km.augment_centroids(cands, ref=part.xa)
    if state is None:
        dist_sq = xp.full(part.n_rows, xp.inf, dtype=xp.float32, device=dev)
        labels = xp.zeros(part.n_rows, dtype=xp.int64, device=dev)
    else:
        dist_sq, labels = xp.asarray(state[0], copy=True), xp.asarray(state[1], copy=True)
    if own is not None:  # sampled rows had a distance > 0, so each is now its own nearest candidate
        local, first = own
        local_dev = be.like(np.asarray(local, dtype=np.int64), part.xa)
        dist_sq = be.put(xp, dist_sq, local_dev, 0.0)
        labels = be.put(xp, labels, local_dev, be.like(first + np.arange(len(local), dtype=np.int64), part.xa))
    todo = be.nonzero(xp, dist_sq > 0)
    if todo.shape[0] > part.n_rows - part.n_rows // 16:  # little to skip: contiguous blocks, no gathering
        todo = None
    total = part.n_rows if todo is None else todo.shape[0]
    for start in range(0, total, rows):
        stop = min(start + rows, total)
        if todo is None:
            block = slice(start, stop)
            xa, x_sq, old_d, old_l = part.xa[block, :], part.x_sq[block], dist_sq[block], labels[block]
        else:
            block = todo[start:stop]
            xa, x_sq = xp.take(part.xa, block, axis=0), xp.take(part.x_sq, block)
            old_d, old_l = xp.take(dist_sq, block), xp.take(labels, block)
        lab, dist = km.nearest(xa, x_sq, ca, rows)
        closer = dist < old_d  # ties keep the older (lower-index) candidate
        new_l = xp.where(closer, xp.astype(lab, xp.int64) + offset, old_l)
        new_d = xp.where(closer, dist, old_d)
        if todo is None:
            labels[block], dist_sq[block] = new_l, new_d
        else:
            labels, dist_sq = be.put(xp, labels, block, new_l), be.put(xp, dist_sq, block, new_d)
    return dist_sq, labels


def state_cost(state) -> float:
    xp = be.namespace(state[0])
    return float(xp.sum(xp.astype(state[0], xp.float64)))


def oversample(part: Partition, state, seed: list[int], phi: float, expected: float) -> tuple:
    """Bernoulli sample with probability min(1, expected * d^2 / phi) (Bahmani et al.): (rows, local indices).

    The uniform draws come from NumPy's generator on the host (the same sample on every backend);
    the rows come back as NumPy."""
    xp = be.namespace(part.xa)
    draws = be.like(be.host_random(seed, part.n_rows), part.xa)
    if phi > 0:
        prob = xp.minimum(expected * xp.astype(state[0], xp.float64) / phi, 1.0)
        picked = be.nonzero(xp, draws < prob)
    else:
        picked = be.nonzero(xp, draws < 0.0)
    return np.ascontiguousarray(be.to_host(be.take_rows(part.x, picked))), be.to_host(picked)


def reduce_on_worker(points: np.ndarray, weights: np.ndarray, k: int, seed: list[int], n_rows: int) -> np.ndarray:
    """On a worker: the k-means|| reduction on its device (CuPy on a GPU worker, as the partitions);
    the (k, d) float32 centroids come back as NumPy."""
    xp = be.partition_namespace(partition_module.ARRAY_BACKEND)
    # The sampling passes' score block (16 MB) and the candidates broadcast each round, freed but
    # kept by glibc, would sit under the reduction's own blocks at this worker's peak.
    be.drop_scratch()
    release_freed()
    centroids = km.reduce_candidates(points if be.is_numpy(xp) else xp.asarray(points), weights, k, seed, n_rows)
    release_freed()  # its distance blocks' heap pages, before the fit's steps run here
    return centroids


def candidate_weights(state, m: int) -> np.ndarray:
    return be.to_host(be.bincount(be.namespace(state[1]), state[1], m)).astype(np.float64)
