"""The KMeansPartition operator (kopf): handlers, pure child builders, the level-based reconcile, the CRD."""
