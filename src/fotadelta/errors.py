"""Exceptions shared by every layer of fotadelta."""


class PatchError(ValueError):
    """A patch is malformed, truncated, corrupt, or does not fit the given source image."""


class PackageError(PatchError):
    """An update package is malformed, truncated, tampered with or not signed by a trusted key."""
