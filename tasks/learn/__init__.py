"""Models that learn batch by batch: estimators, their state, prequential steps, shards."""
