"""KMeansPartition: k-means partitioning of document embeddings on Dask, with a Kubernetes operator.

Shared modules live here (the job and resource spec, the status model, the settings, the CLI, a
small Kubernetes HTTP helper); ``runner/`` is the job (read -> normalise -> fit -> assign -> write)
and ``operator/`` the kopf operator that runs it on Kubernetes.
"""
