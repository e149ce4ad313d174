"""KMeansPartition runner: read, normalise, fit, assign, write.

``from kmeans_partition.runner import KMeansStage`` (imported lazily, so the operator can use
the spec model without loading Dask).
"""

__all__ = ["KMeansStage"]


def __getattr__(name):
    if name == "KMeansStage":
        from .stage import KMeansStage

        return KMeansStage
    raise AttributeError(name)
