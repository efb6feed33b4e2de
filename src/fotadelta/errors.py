"""Exceptions shared by every layer of fotadelta."""


class PatchError(ValueError):
    """A patch is malformed, truncated, corrupt, or does not fit the given source image."""
