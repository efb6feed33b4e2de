"""OMA FUMO result codes in words: what a device's report of an update means (OMA-TS-DM-FUMO 1.0)."""

from __future__ import annotations

__all__ = ["RESULTS", "describe"]

RESULTS: dict[int, str] = {
    200: "successful",
    400: "management client error",
    401: "user cancelled",
    402: "corrupted package",
    403: "package does not fit the device",
    404: "package validation failed (signature or SIM)",
    405: "package not acceptable",
    406: "alternate download authentication failure",
    407: "alternate download request timed out",
    408: "not implemented",
    409: "undefined error",
    410: "firmware update failed",
    411: "malformed or bad URL",
    412: "alternate download server unavailable",
    500: "alternate download server error",
    501: "download failed: device out of memory",
    502: "update failed: device out of memory",
    503: "download failed: network problem",
}

# Ranges the specification leaves to vendors.
_VENDOR = ((250, 299, "successful (vendor-specific)"), (450, 499, "client error (vendor-specific)"),
           (550, 599, "download server error (vendor-specific)"))


def describe(code: int) -> str:
    """The meaning of a FUMO result code, e.g. 404 -> "package validation failed (signature or SIM)"."""
    if code in RESULTS:
        return RESULTS[code]
    for low, high, text in _VENDOR:
        if low <= code <= high:
            return text
    return "not a FUMO result code"
