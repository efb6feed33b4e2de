"""OMA FUMO result codes and what they mean, for reports and failure reasons."""

from __future__ import annotations

RESULTS = {
    200: "successful",
    400: "client error",
    401: "user cancelled",
    402: "corrupted firmware update package",
    403: "firmware update package and device mismatch",
    404: "package validation failed (signature or operator)",
    405: "firmware update package not acceptable",
    406: "alternate download authentication failure",
    407: "alternate download request timed out",
    408: "not implemented",
    409: "undefined error",
    410: "firmware update failed",
    411: "malformed or bad URL",
    412: "alternate download server unavailable",
    500: "alternate download server error",
    501: "download failed, out of memory",
    502: "update failed, out of memory",
    503: "download failed, network error",
}


def describe(code: int | None) -> str:
    """The meaning of a FUMO result code (ranges for the vendor-specific ones)."""
    if code is None:
        return "no result"
    if code in RESULTS:
        return RESULTS[code]
    if 250 <= code <= 299:
        return "successful (vendor specific)"
    if 450 <= code <= 499:
        return "client error (vendor specific)"
    if 550 <= code <= 599:
        return "download server error (vendor specific)"
    return "unknown result code"
