"""The numpy-only base: boxes, windows, label policy, objects, statistics, metrics, errors, jobs."""
