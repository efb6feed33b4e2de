"""Independent third-party OMA DM clients, for conformance tests against the fotadelta server.

These are not fotadelta's DmClient reconfigured: each has its own fixed server account (server id,
path, credentials per direction, first nonce) and behaviours of deployed clients, and shares no
code with fotadelta's DM layer. Package 1 comes from the message captures in `fixtures/dm/`; the
other messages are written here as XML text; XML is parsed with ElementTree; WBXML is made and read
by libwbxml (`xml2wbxml`, `wbxml2xml`, Debian libwbxml2-utils), never by fotadelta's codec. Only
the credential formulas of the specification are written again here (MD5/base64 from hashlib).

Behaviours (see `Profile`): data-sync content types; basic client Cred in every SyncHdr until 212;
an empty first server nonce; Alert 1201 without Item; DevInfo with an interior node; bare DevIds;
FUMO anywhere in its tree; Sequence and structured Get optional; OMA DM 1.2 or 1.1.2; a Chal of its
own choosing for the server's credentials; or never accepting the server's credentials at all.

Run against a server as a script (the closing-note measurements):
    python tests/dm_thirdparty.py --server http://127.0.0.1:8080/funambol/dm --profile funambol [--wbxml]
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from string import Template
from xml.sax.saxutils import escape

import httpx

FIXTURES = Path(__file__).parent / "fixtures" / "dm"
FUMO_TYPE = "urn:oma:mo:oma-fumo:1.0"
_PROLOG = {"1.2": '<?xml version="1.0"?>\n<!DOCTYPE SyncML PUBLIC "-//SYNCML//DTD SyncML 1.2//EN" '
                  '"http://www.openmobilealliance.org/tech/DTD/OMA-TS-SyncML_RepPro_DTD-V1_2.dtd">\n',
           "1.1": '<?xml version="1.0"?>\n<!DOCTYPE SyncML PUBLIC "-//SYNCML//DTD SyncML 1.1//EN" '
                  '"http://www.syncml.org/docs/syncml_represent_v11_20020213.dtd">\n'}


def _md5_b64(data: bytes) -> bytes:
    return base64.b64encode(hashlib.md5(data).digest())


def md5_cred(user: str, password: str, nonce: bytes) -> str:
    return _md5_b64(_md5_b64(f"{user}:{password}".encode()) + b":" + nonce).decode()


def basic_cred(user: str, password: str) -> str:
    return base64.b64encode(f"{user}:{password}".encode()).decode()


@dataclass
class Profile:
    """A deployed client's fixed account and behaviours."""

    server_url: str
    dev_id: str = "351234567890123"  # bare: no IMEI: prefix
    server_id: str = "funambol"
    client_user: str = "funambol"
    client_password: str = "funambol"
    client_auth: str = "basic"  # basic | md5
    server_password: str = "srvpwd"
    server_auth: str = "md5"  # what the client asks of the server, in its Chal: md5 | basic
    server_nonce: bytes = b""  # the first SRVCRED nonce: empty
    make: str = "Funambol"
    model: str = "DM C client"
    protocol: str = "1.2"  # 1.2 | 1.1 (the capture used follows)
    wbxml: bool = False
    content_type_family: str = "syncml"  # "syncml": application/vnd.syncml+xml (data sync); "dm": ...syncml.dm+xml
    fumo_uri: str = "./FUMO"
    sequence: bool = True
    structured_get: bool = True
    accept_server_creds: bool = True
    max_msg_size: int = 10000
    firmware: str = "1.0"

    @property
    def content_type(self) -> str:
        family = "vnd.syncml" if self.content_type_family == "syncml" else "vnd.syncml.dm"
        return f"application/{family}+{'wbxml' if self.wbxml else 'xml'}"


def funambol(server_url: str, **overrides: object) -> Profile:
    """The target's client: server id funambol, client basic funambol/funambol, server MD5 funambol/srvpwd."""
    return Profile(server_url, **overrides)  # type: ignore[arg-type]


@dataclass
class Node:
    format: str
    type: str | None = None
    value: str = ""


@dataclass
class Exchange:
    url: str  # where we sent it
    request: str  # the XML we sent (before libwbxml, for WBXML)
    response: str  # the XML we got (after libwbxml)
    status: int


@dataclass
class SessionResult:
    exchanges: list[Exchange] = field(default_factory=list)
    aborted: bool = False
    server_accepted: bool = False  # we answered 212 to the server's credentials
    authenticated: bool = False  # the server answered 212 to ours
    http_error: int | None = None


def _strip_ns(root: ET.Element) -> ET.Element:
    for e in root.iter():
        e.tag = e.tag.rsplit("}", 1)[-1]
    return root


def _text(e: ET.Element | None, path: str) -> str | None:
    if e is None:
        return None
    found = e.find(path)
    return None if found is None else (found.text or "").strip()


class ThirdPartyClient:
    """One device running a third-party DM client with its own DMAcc."""

    def __init__(self, profile: Profile, *, http: httpx.Client | None = None) -> None:
        self.p = profile
        self.http = http or httpx.Client(timeout=30.0)
        self.client_nonce = b""  # for an MD5 client credential
        self.server_nonce = profile.server_nonce
        self.tree: dict[str, Node] = {}
        self.shown: list[str] = []
        self.pending_exec: tuple[str, str | None] | None = None  # (node, correlator) to run after the session
        self.reports: list[tuple[str, str, str | None]] = []  # (node, result code, correlator) for 1.2
        self.downloaded: bytes | None = None
        self.installed: list[str] = []  # package versions installed
        self.sessions: list[SessionResult] = []
        self._build_tree()

    # -- the tree ------------------------------------------------------------------------------

    def _build_tree(self) -> None:
        p, t = self.p, self.tree
        t["."] = Node("node")
        for uri, value in (("./DevInfo/DevId", p.dev_id), ("./DevInfo/Man", p.make), ("./DevInfo/Mod", p.model),
                           ("./DevInfo/DmV", "1.1.2" if p.protocol == "1.1" else "1.2"), ("./DevInfo/Lang", "en-US"),
                           ("./DevDetail/FwV", p.firmware), ("./DevDetail/SwV", p.firmware),
                           ("./DevDetail/LrgObj", "false")):
            self._put(uri, Node("chr", "text/plain", value))
        fumo = p.fumo_uri
        self._put(fumo, Node("node", FUMO_TYPE))
        for leaf in ("PkgName", "PkgVersion", "DownloadAndUpdate/PkgURL", "Download/PkgURL"):
            self._put(f"{fumo}/{leaf}", Node("chr", "text/plain", ""))
        self._put(f"{fumo}/DownloadAndUpdate", Node("node"))
        self._put(f"{fumo}/State", Node("int", "text/plain", "10"))

    def _put(self, uri: str, node: Node) -> None:
        parts = uri.split("/")
        for i in range(1, len(parts)):
            parent = "/".join(parts[:i])
            if parent not in self.tree:
                self.tree[parent] = Node("node")
            elif self.tree[parent].format != "node":
                raise ValueError(f"{parent} is a leaf")
        if uri in self.tree and self.tree[uri].format == "node" and node.format == "node" and node.type is None:
            return
        self.tree[uri] = node

    def _children(self, uri: str) -> list[str]:
        prefix = "./" if uri == "." else uri + "/"
        return [u[len(prefix):] for u in self.tree if u.startswith(prefix) and "/" not in u[len(prefix):]]

    # -- messages --------------------------------------------------------------------------------

    def _cred(self, session_authenticated: bool) -> str:
        if session_authenticated:
            return ""
        p = self.p
        if p.client_auth == "basic":
            data, kind = basic_cred(p.client_user, p.client_password), "syncml:auth-basic"
        else:
            data, kind = md5_cred(p.client_user, p.client_password, self.client_nonce), "syncml:auth-md5"
        return (f'<Cred><Meta><Format xmlns="syncml:metinf">b64</Format><Type xmlns="syncml:metinf">{kind}</Type>'
                f"</Meta><Data>{data}</Data></Cred>")

    def _package1(self, sid: str, msg_id: int, url: str, cred: str, alert: int, extra: str) -> str:
        name = "wm_dm112_package1.xml" if self.p.protocol == "1.1" else "funambol_package1.xml"
        return Template((FIXTURES / name).read_text()).substitute(
            session_id=sid, msg_id=msg_id, server_url=escape(url), dev_id=escape(self.p.dev_id),
            user=escape(self.p.client_user), cred=cred, max_msg_size=self.p.max_msg_size, alert=alert,
            make=escape(self.p.make), model=escape(self.p.model), extra=extra)

    def _message(self, sid: str, msg_id: int, url: str, cred: str, body: str) -> str:
        ver = self.p.protocol
        return (f'<SyncML xmlns="SYNCML:SYNCML{ver}"><SyncHdr><VerDTD>{ver}</VerDTD><VerProto>DM/{ver}</VerProto>'
                f"<SessionID>{sid}</SessionID><MsgID>{msg_id}</MsgID><Target><LocURI>{escape(url)}</LocURI></Target>"
                f"<Source><LocURI>{escape(self.p.dev_id)}</LocURI><LocName>{escape(self.p.client_user)}</LocName>"
                f'</Source>{cred}<Meta><MaxMsgSize xmlns="syncml:metinf">{self.p.max_msg_size}</MaxMsgSize></Meta>'
                f"</SyncHdr><SyncBody>{body}<Final/></SyncBody></SyncML>")

    def _post(self, url: str, xml: str) -> tuple[int, str]:
        body = xml.encode()
        if self.p.wbxml:
            body = _libwbxml("xml2wbxml", (_PROLOG[self.p.protocol] + xml).encode())
        response = self.http.post(url, content=body, headers={"content-type": self.p.content_type})
        if response.status_code != 200:
            return response.status_code, response.text
        content = response.content
        if self.p.wbxml:
            if "wbxml" not in response.headers.get("content-type", ""):
                raise AssertionError(f"a WBXML request was answered with {response.headers.get('content-type')}")
            content = _libwbxml("wbxml2xml", content)
        return 200, content.decode()

    # -- a session -------------------------------------------------------------------------------

    def session(self, *, alert: int = 1201, session_id: str | None = None) -> SessionResult:
        """One DM session to its end (or until the server aborts or cuts it off)."""
        p, result = self.p, SessionResult()
        self.sessions.append(result)
        sid = session_id or str(secrets.randbelow(9000) + 1000)
        url, msg_id = p.server_url, 0
        authenticated = False  # the server said 212 to our credentials
        server_ok = False
        reports, self.reports = self.reports, []
        extra = "".join(self._generic_alert(i + 3, *r) for i, r in enumerate(reports))
        body: str | None = None  # None: package 1
        for _ in range(100):  # (a bound: no test client loops forever)
            msg_id += 1
            cred = "" if authenticated else self._cred(False)
            xml = (self._package1(sid, msg_id, url, cred, alert, extra) if body is None
                   else self._message(sid, msg_id, url, cred, body))
            status, text = self._post(url, xml)
            result.exchanges.append(Exchange(url, xml, text, status))
            if status != 200:
                result.http_error = status
                return result
            reply = _strip_ns(ET.fromstring(text))
            hdr, sbody = reply.find("SyncHdr"), reply.find("SyncBody")
            assert hdr is not None and sbody is not None
            server_msg = _text(hdr, "MsgID") or "0"
            url = _text(hdr, "RespURI") or url
            out: list[str] = []
            ids = iter(range(1, 10_000))
            # The server's answer to our header.
            hdr_status = next((s for s in sbody.findall("Status") if _text(s, "Cmd") == "SyncHdr"), None)
            code = _text(hdr_status, "Data")
            chal_nonce = _text(hdr_status, "Chal/Meta/NextNonce") if hdr_status is not None else None
            if chal_nonce is not None:
                self.client_nonce = base64.b64decode(chal_nonce)
            if code == "212":
                authenticated = result.authenticated = True
            if any(_text(c, "Data") == "1223" for c in sbody.findall("Alert")):
                result.aborted = True
                return result
            if code in ("401", "407"):
                body = None  # start package 1 again, with credentials for the new nonce
                if len(result.exchanges) > 6:
                    return result
                continue
            # Our check of the server's credentials.
            if not server_ok:
                server_ok = self._server_authentic(hdr)
                if not server_ok:
                    nonce = secrets.token_bytes(8)
                    self.server_nonce = nonce
                    out.append(self._status(next(ids), server_msg, "0", "SyncHdr", 401 if _text(hdr, "Cred/Data")
                                            else 407, chal=self._chal(nonce)))
                    out += [self._status(next(ids), server_msg, _text(c, "CmdID") or "0", c.tag, 401)
                            for c in sbody if c.tag not in ("Status", "Final")]
                    body = "".join(out)
                    continue
                result.server_accepted = True
                nonce = secrets.token_bytes(8)
                out.append(self._status(next(ids), server_msg, "0", "SyncHdr", 212, chal=self._chal(nonce)))
                self.server_nonce = nonce
            else:
                out.append(self._status(next(ids), server_msg, "0", "SyncHdr", 200))
            results: list[str] = []
            for cmd in sbody:
                if cmd.tag in ("Status", "Final", "Results"):
                    continue
                out += self._execute(cmd, server_msg, ids, results)
            out += results
            final = sbody.find("Final") is not None
            if final and len(out) == 1:
                return result  # only our header status would be left: the session is over
            if not final and len(out) == 1:
                out.append(f"<Alert><CmdID>{next(ids)}</CmdID><Data>1222</Data></Alert>")
            body = "".join(out)
        raise AssertionError("the session did not end in 100 messages")

    def _server_authentic(self, hdr: ET.Element) -> bool:
        p = self.p
        if not p.accept_server_creds:
            return False
        data, kind = _text(hdr, "Cred/Data"), _text(hdr, "Cred/Meta/Type") or "syncml:auth-basic"
        if data is None:
            return False
        if kind == "syncml:auth-md5" and p.server_auth == "md5":
            return data == md5_cred(p.server_id, p.server_password, self.server_nonce)
        if kind == "syncml:auth-basic" and p.server_auth == "basic":
            return data == basic_cred(p.server_id, p.server_password)
        return False

    def _chal(self, nonce: bytes) -> str:
        kind = "syncml:auth-md5" if self.p.server_auth == "md5" else "syncml:auth-basic"
        return (f'<Chal><Meta><Type xmlns="syncml:metinf">{kind}</Type><Format xmlns="syncml:metinf">b64</Format>'
                f'<NextNonce xmlns="syncml:metinf">{base64.b64encode(nonce).decode()}</NextNonce></Meta></Chal>')

    @staticmethod
    def _status(cmd_id: int, msg_ref: str, cmd_ref: str, cmd: str, code: int, *, chal: str = "", target: str = "",
                items: str = "") -> str:
        ref = f"<TargetRef>{escape(target)}</TargetRef>" if target else ""
        return (f"<Status><CmdID>{cmd_id}</CmdID><MsgRef>{msg_ref}</MsgRef><CmdRef>{cmd_ref}</CmdRef><Cmd>{cmd}</Cmd>"
                f"{ref}{chal}<Data>{code}</Data>{items}</Status>")

    def _generic_alert(self, cmd_id: int, node: str, code: str, correlator: str | None) -> str:
        corr = f"<Correlator>{escape(correlator)}</Correlator>" if correlator else ""
        return (f"<Alert><CmdID>{cmd_id}</CmdID><Data>1226</Data>{corr}<Item><Source><LocURI>{escape(node)}</LocURI>"
                f'</Source><Meta><Type xmlns="syncml:metinf">org.openmobilealliance.dm.firmwareupdate.downloadandupdate'
                f'</Type><Format xmlns="syncml:metinf">int</Format></Meta><Data>{code}</Data></Item></Alert>')

    def _execute(self, cmd: ET.Element, msg_ref: str, it: Iterator[int], results: list[str]) -> list[str]:
        cmd_id = _text(cmd, "CmdID") or "0"

        def status(code: int, target: str = "", items: str = "") -> str:
            return self._status(next(it), msg_ref, cmd_id, cmd.tag, code, target=target, items=items)

        if cmd.tag == "Sequence" or cmd.tag == "Atomic":
            if not self.p.sequence:
                return [status(406)]  # an optional feature this client lacks
            out = [status(200)]
            stop = False
            for inner in cmd:
                if inner.tag in ("CmdID", "Meta", "NoResp"):
                    continue
                if stop:
                    out.append(self._status(next(it), msg_ref, _text(inner, "CmdID") or "0", inner.tag, 215))
                    continue
                got = self._execute(inner, msg_ref, it, results)
                out += got
                stop = inner.tag == "Alert" and "<Data>304</Data>" in got[0]
            return out
        if cmd.tag == "Alert":
            code = _text(cmd, "Data")
            texts = [(_text(i, "Data") or "") for i in cmd.findall("Item")]
            if code in ("1100", "1101"):
                self.shown.append(texts[-1] if texts else "")
                return [status(200)]
            return [status(406)]
        targets = [(_text(i, "Target/LocURI") or "", i) for i in cmd.findall("Item")]
        if cmd.tag == "Get":
            out = []
            for target, _ in targets:
                found = self._get(target)
                if isinstance(found, int):
                    out.append(status(found, target))
                    continue
                out.append(status(200, target))
                results.append(f"<Results><CmdID>{next(it)}</CmdID><MsgRef>{msg_ref}</MsgRef><CmdRef>{cmd_id}</CmdRef>"
                               + "".join(found) + "</Results>")
            return out
        if cmd.tag == "Replace":
            out = []
            for target, item in targets:
                if target not in self.tree or self.tree[target].format == "node":
                    out.append(status(404, target))
                    continue
                self.tree[target].value = _text(item, "Data") or ""
                out.append(status(200, target))
            return out
        if cmd.tag == "Exec":
            target = targets[0][0] if targets else ""
            if target == f"{self.p.fumo_uri}/DownloadAndUpdate" and self.tree[f"{target}/PkgURL"].value:
                self.pending_exec = (target, _text(cmd, "Correlator"))
                return [status(202, target)]
            return [status(404 if target not in self.tree else 405, target)]
        return [status(406)]

    def _get(self, target: str) -> list[str] | int:
        uri, _, query = target.partition("?")
        uri = uri.rstrip("/") or "."
        if uri not in self.tree:
            return 404
        if query.startswith("list="):
            if not self.p.structured_get:
                return 406
            return [self._item(u, with_data=query == "list=StructData") for u in self.tree
                    if u == uri or u.startswith(("./" if uri == "." else uri + "/"))]
        node = self.tree[uri]
        if query == "prop=Type":
            return [self._plain_item(target, node.type or "")]
        if query == "prop=Format":
            return [self._plain_item(target, node.format)]
        if query:
            return 406
        if node.format == "node":
            return [self._item(uri, with_data=False, value="/".join(self._children(uri)))]
        return [self._item(uri, with_data=True)]

    def _item(self, uri: str, *, with_data: bool, value: str | None = None) -> str:
        node = self.tree[uri]
        kind = f'<Type xmlns="syncml:metinf">{escape(node.type)}</Type>' if node.type else ""
        data = value if value is not None else node.value if with_data and node.format != "node" else None
        return (f'<Item><Source><LocURI>{escape(uri)}</LocURI></Source><Meta><Format xmlns="syncml:metinf">'
                f"{node.format}</Format>{kind}</Meta>" + (f"<Data>{escape(data)}</Data>" if data is not None else "")
                + "</Item>")

    @staticmethod
    def _plain_item(target: str, value: str) -> str:
        return (f'<Item><Source><LocURI>{escape(target)}</LocURI></Source><Meta><Format xmlns="syncml:metinf">chr'
                f"</Format></Meta><Data>{escape(value)}</Data></Item>")

    # -- FUMO after the session ------------------------------------------------------------------

    def finish_update(self) -> None:
        """Download the package the server set, "install" it, and keep the result (Generic Alert or State)."""
        if self.pending_exec is None:
            return
        node, correlator = self.pending_exec
        self.pending_exec = None
        response = self.http.get(self.tree[f"{node}/PkgURL"].value)
        ok = response.status_code == 200 and len(response.content) > 0
        self.downloaded = response.content if ok else None
        version = self.tree[f"{self.p.fumo_uri}/PkgVersion"].value
        if ok:
            self.installed.append(version)
            self.tree["./DevDetail/FwV"].value = self.tree["./DevDetail/SwV"].value = version
        self.tree[f"{self.p.fumo_uri}/State"].value = "100" if ok else "80"
        if self.p.protocol == "1.2":
            self.reports.append((node, "200" if ok else "503", correlator))


def _libwbxml(tool: str, data: bytes) -> bytes:
    path = shutil.which(tool)
    if path is None:
        raise AssertionError(f"{tool} not found: install Debian's libwbxml2-utils (make install does)")
    with tempfile.TemporaryDirectory() as tmp:
        src, out = os.path.join(tmp, "in"), os.path.join(tmp, "out")
        Path(src).write_bytes(data)
        args = [path, "-o", out, src] if tool == "xml2wbxml" else [path, "-m", "0", "-o", out, src]
        subprocess.run(args, check=True, capture_output=True, timeout=30)
        return Path(out).read_bytes()


def _main() -> int:
    ap = argparse.ArgumentParser(description="Run one session of an independent third-party DM client.")
    ap.add_argument("--server", required=True, help="The DM URL the client's account names.")
    ap.add_argument("--profile", choices=["funambol", "rejecting"], default="funambol")
    ap.add_argument("--dev-id", default="351234567890123")
    ap.add_argument("--wbxml", action="store_true")
    args = ap.parse_args()
    client = ThirdPartyClient(funambol(args.server, dev_id=args.dev_id, wbxml=args.wbxml,
                                       accept_server_creds=args.profile != "rejecting"))
    result = client.session()
    state = "aborted by the server" if result.aborted else f"HTTP {result.http_error}" if result.http_error \
        else "completed"
    print(f"{args.profile} ({'WBXML' if args.wbxml else 'XML'}): session {state} in {len(result.exchanges)} HTTP "
          f"exchanges; server accepted our credentials: {result.authenticated}; we accepted the server's: "
          f"{result.server_accepted}")
    return 0 if state == "completed" or args.profile == "rejecting" else 1


if __name__ == "__main__":
    sys.exit(_main())


__all__ = ["Profile", "SessionResult", "ThirdPartyClient", "basic_cred", "funambol", "md5_cred"]
