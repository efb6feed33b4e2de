"""A smoke test of an installed fotadelta, for a fresh install (tests/test_packaging.py) and for each
wheel cibuildwheel builds: plain and in-place diff/apply round trips through the `fotadelta`
command, in an empty temporary directory. Needs nothing but the installed package.

    python tests/wheel_smoke.py      # exit status 0 and "ok" when every round trip holds"""

from __future__ import annotations

import random
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path


def main() -> int:
    exe = shutil.which("fotadelta", path=str(Path(sys.executable).parent)) or shutil.which("fotadelta")
    if exe is None:
        print("wheel_smoke: the fotadelta command is not installed", file=sys.stderr)
        return 1
    r = random.Random(4)
    # Code-like data: repeated words with small edits, so the delta has matches to find.
    words = [r.randbytes(4) for _ in range(256)]
    old = b"".join(r.choice(words) for _ in range(16_000))
    new = bytearray(old)
    for _ in range(40):
        at = r.randrange(len(new) - 8)
        new[at:at + 8] = r.randbytes(8)
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        (d / "old.bin").write_bytes(old)
        (d / "new.bin").write_bytes(new)
        for name, extra in (("update.fdp", []), ("update.fdip", ["--in-place"])):
            for args in (["diff", "-q", *extra, "old.bin", "new.bin", "-o", name],
                         ["apply", "-q", "old.bin", name, "-o", f"{name}.out"]):
                done = subprocess.run([exe, *args], cwd=d, capture_output=True, text=True)
                if done.returncode != 0:
                    print(f"wheel_smoke: fotadelta {' '.join(args)}: {done.stderr.strip()}", file=sys.stderr)
                    return 1
            if (d / f"{name}.out").read_bytes() != new:
                print(f"wheel_smoke: {name} did not reproduce the new image", file=sys.stderr)
                return 1
    print("ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
