"""The OMA DM bootstrap message, plain profile: the DM account a device needs to reach this server.

A SyncML DM 1.2 message (WBXML, session 0, message 1) of Add commands that create the DMAcc
management object `./DMAcc/<server id>`: AppID w7, ServerID, AppAddr (the server's /dm URL),
AAuthPref, and the client and server credentials (AAuthName, AAuthSecret per direction). It is
secured as the bootstrap specification asks for a user PIN: `SEC=USERPIN` (1) and `MAC` the
HMAC-SHA1 of the message keyed by the PIN, in upper-case hex, both as parameters of the
content type the push carries. The message necessarily holds the device's DM secrets: only roles
that may write the registry get it, and each time is audited."""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from fotadelta.dm.codec import Encoding, encode
from fotadelta.dm.model import Add, Item, Message, Meta, SyncHdr

SEC_USERPIN = "1"
_AUTH_TYPES = {"md5": "DIGEST", "basic": "BASIC", "hmac": "HMAC"}


@dataclass(frozen=True)
class BootstrapMessage:
    content_type: str  # what a push carries it as, SEC and MAC included
    body: bytes  # the WBXML SyncML DM message
    sec: str
    mac: str


def plain_profile(*, dev_id: str, server_id: str, server_url: str, user: str, password: str, server_password: str,
                  auth: str, pin: str) -> BootstrapMessage:
    """The bootstrap message for one device, MAC'd with the user PIN it will be asked for."""
    if not 4 <= len(pin) <= 64 or not pin.isprintable():
        raise ValueError("the bootstrap PIN is 4 to 64 printable characters")
    acc = f"./DMAcc/{server_id}"
    kind = _AUTH_TYPES[auth]
    leaves = [("AppID", "w7"), ("ServerID", server_id), ("Name", server_id), ("AppAddr/srv/Addr", server_url),
              ("AppAddr/srv/AddrType", "URI"), ("AAuthPref", kind),
              ("AppAuth/cl/AAuthLevel", "CLCRED"), ("AppAuth/cl/AAuthType", kind),
              ("AppAuth/cl/AAuthName", user), ("AppAuth/cl/AAuthSecret", password),
              ("AppAuth/srv/AAuthLevel", "SRVCRED"), ("AppAuth/srv/AAuthType", kind),
              ("AppAuth/srv/AAuthName", server_id), ("AppAuth/srv/AAuthSecret", server_password)]
    items = [Item(target=acc, meta=Meta(format="node", type="urn:oma:mo:oma-dm-dmacc:1.0"))]
    items += [Item(target=f"{acc}/{name}", meta=Meta(format="chr"), data=value) for name, value in leaves]
    add = Add(items, cmd_id=1)
    body = encode(Message(SyncHdr("0", 1, dev_id, server_url, source_name=server_id), [add], True), Encoding.WBXML)
    mac = hmac.new(pin.encode(), body, hashlib.sha1).hexdigest().upper()
    return BootstrapMessage(f"{Encoding.WBXML.content_type}; SEC={SEC_USERPIN}; MAC={mac}", body, SEC_USERPIN, mac)
