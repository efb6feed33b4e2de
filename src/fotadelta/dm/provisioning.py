"""Factory credentials: both sides derive a device's DM passwords from a shared secret and its DevId.

A fleet of emulated devices can then talk to a server without a provisioning step per device:
the server accepts an unknown device whose credentials match the derivation and enrols it. Real
deployments provision per-device secrets instead (the server's store takes them too)."""

from __future__ import annotations

import base64
import hashlib
import hmac
from dataclasses import dataclass

DEMO_SECRET = "fotadelta-demo-factory-secret"  # for the demo and tests only
SERVER_ID = "fotadelta"


@dataclass(frozen=True)
class Credentials:
    user: str
    password: str
    server_id: str
    server_password: str


def derive(secret: str, dev_id: str, server_id: str = SERVER_ID) -> Credentials:
    """The client and server passwords a device with dev_id gets from the factory secret."""

    def one(role: str) -> str:
        mac = hmac.new(secret.encode(), f"{role}:{dev_id}".encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac[:15]).decode()

    return Credentials(dev_id, one("client"), server_id, one("server"))
