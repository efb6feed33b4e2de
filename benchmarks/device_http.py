#!/usr/bin/env python3
"""CPU per request of the emulated devices' HTTP client (fotadelta.dm.transport.DeviceHttp) and of httpx.Client.

--requests POSTs of a DM-sized body (1.6 KB; a 1.5 KB answer) over one client to a loopback uvicorn that runs
in a child process, so only the client's work is in this process. Prints this process's CPU per request. For
repeatable figures run it under callgrind with two request counts and divide the difference of the instruction
counts by the difference of the counts (start-up cancels out):

    valgrind --tool=callgrind python benchmarks/device_http.py --client device --requests 50
    valgrind --tool=callgrind python benchmarks/device_http.py --client device --requests 350
See benchmarks/README.md (dm_workers.py, fourth pass).
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import time

BODY = b"y" * 1600
ANSWER = b"x" * 1500
TYPE = "application/vnd.syncml.dm+xml"


def serve(port: int) -> None:
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    async def dm(request: Request) -> Response:
        await request.body()
        return Response(ANSWER, media_type=TYPE)

    uvicorn.run(Starlette(routes=[Route("/dm", dm, methods=["POST"])]), host="127.0.0.1", port=port,
                log_level="warning")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--client", choices=("device", "httpx"), default="device")
    ap.add_argument("--requests", type=int, default=1000)
    ap.add_argument("--serve", type=int, metavar="PORT", help=argparse.SUPPRESS)  # (the child process)
    args = ap.parse_args(argv)
    if args.serve:
        serve(args.serve)
        return 0
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, __file__, "--serve", str(port)])
    try:
        import httpx

        from fotadelta.dm.transport import DeviceHttp

        client: DeviceHttp | httpx.Client = DeviceHttp() if args.client == "device" else httpx.Client()
        url, headers = f"http://127.0.0.1:{port}/dm", {"content-type": TYPE, "accept": TYPE}
        deadline = time.monotonic() + 30
        while True:  # until the server answers
            try:
                client.post(url, content=BODY, headers=headers)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise SystemExit("error: the loopback server did not start") from None
                time.sleep(0.1)
        cpu = time.process_time()
        for _ in range(args.requests):
            r = client.post(url, content=BODY, headers=headers)
            if r.status_code != 200 or r.content != ANSWER:
                raise SystemExit(f"error: unexpected answer {r.status_code}")
        cpu = time.process_time() - cpu
        client.close()
    finally:
        server.terminate()
        server.wait(10)
    print(f"{args.client}: {args.requests} requests, {1e6 * cpu / max(1, args.requests):.0f} us of CPU each")
    return 0


if __name__ == "__main__":
    sys.exit(main())
