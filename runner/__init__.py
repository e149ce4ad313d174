"""KMeansPartition runner: read, normalise, fit, assign, write."""
