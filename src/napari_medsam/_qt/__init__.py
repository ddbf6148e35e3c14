"""The napari/Qt view: the dock widget and its Qt helpers (the only package that imports Qt)."""
