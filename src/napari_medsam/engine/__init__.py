"""The engine: the predictor, embedding caches and store, prefetch, propagation, the key-slice path."""
