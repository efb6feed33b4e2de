"""fotadelta: firmware-over-the-air binary deltas, update packages and OMA DM delivery."""

from fotadelta.delta import PatchInfo, apply, apply_file, diff, diff_file, info
from fotadelta.errors import PatchError

__all__ = ["PatchError", "PatchInfo", "apply", "apply_file", "diff", "diff_file", "info"]
__version__ = "0.1.0"
