"""napari layers <-> core requests, Qt-free: prompt coordinates, the labels policy, run requests."""
