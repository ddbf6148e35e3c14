class ModelLoadError(RuntimeError):
    """A model could not be loaded; the message says how to fix it."""
