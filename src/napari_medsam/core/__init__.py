"""Qt-free and napari-free core: predictor, embedding cache, preprocessing, windows, jobs, propagation."""
