"""KMeansPartition Kubernetes operator (kopf)."""
