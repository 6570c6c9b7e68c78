"""What every learner's training shares: the update loop and its evaluation schedule
(`loop`), and where batches come from (`samplers`)."""
