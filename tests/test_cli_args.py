"""Bad arguments as a newcomer types them: each is one line naming the argument (exit status 2), or one
line naming the file (exit status 1), never a traceback; nothing is written. And the help texts."""

from __future__ import annotations

import json
import random
import re
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from support import firmware_like, mutate
from test_cli import assert_one_line_error

from fotadelta.cli import app
from fotadelta.cli.common import HelpCommand, main

Run = Callable[..., subprocess.CompletedProcess[str]]

BAD_BLOCK_SIZES = {"0": "not a power of two", "-4096": "not a power of two", "1000": "not a power of two",
                   "3000000000": "not a power of two", "4294967296": "out of range", "128": "out of range",
                   "262144": "out of range"}


@pytest.fixture
def run(capsys: pytest.CaptureFixture[str]) -> Run:
    """The command line in this process (as fast as a function call): exit status, stdout, stderr."""
    def invoke(*args: str | Path) -> subprocess.CompletedProcess[str]:
        status = main([str(a) for a in args])
        out, err = capsys.readouterr()
        return subprocess.CompletedProcess(list(args), status, out, err)
    return invoke


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("args")
    r = random.Random(23)
    v1 = firmware_like(r, 20_000)
    (d / "v1").write_bytes(v1)
    (d / "v2").write_bytes(mutate(r, v1, 10))
    (d / "empty").write_bytes(b"")
    (d / "garbage.pem").write_bytes(b"-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n")
    assert main(["keygen", "-q", "-o", str(d / "k")]) == 0
    assert main(["diff", "-q", str(d / "v1"), str(d / "v2"), "-o", str(d / "u.fdp")]) == 0
    return d


def _pack(d: Path, *extra: str | Path) -> list[str | Path]:
    return ["pack", d / "v1", d / "v2", "--key", d / "k", "--make", "Acme", "--model", "S1", "--from", "1.0",
            "--to", "1.1", *extra]


@pytest.mark.parametrize("value", BAD_BLOCK_SIZES)
def test_block_size_is_a_power_of_two_in_range(value: str, work: Path, tmp_path: Path, run: Run) -> None:
    out = tmp_path / "out"
    for args in (["diff", "--in-place", "--block-size", value, work / "v1", work / "v2", "-o", out],
                 _pack(work, "--in-place", "--block-size", value, "-o", out),
                 ["powercut", work / "v1", work / "v2", "--block-size", value],
                 ["build-repo", f"1.0={work / 'v1'}", f"1.1={work / 'v2'}", "--key", work / "k", "--make", "A",
                  "--model", "M", "--block-size", value, "-o", out],
                 ["device", "--imei", "490154203237518", "--once", "--block-size", value]):
        assert_one_line_error(run(*args), "--block-size", BAD_BLOCK_SIZES[value], status=2)
    assert not out.exists()


def test_validation_string_length_before_hex(work: Path, tmp_path: Path, run: Run) -> None:
    out = tmp_path / "u.pkg"
    assert_one_line_error(run(*_pack(work, "--validation-string", "abc", "-o", out)),
                          "--validation-string", "3 characters given; it takes 32 hex digits", status=2)
    assert_one_line_error(run(*_pack(work, "--validation-string", "zz" * 16, "-o", out)),
                          "--validation-string", "not hexadecimal", status=2)
    assert_one_line_error(run("device", "--imei", "490154203237518", "--once", "--validation-string", "a1" * 15),
                          "--validation-string", "30 characters given", status=2)
    assert not out.exists()


def test_in_place_options_need_in_place(work: Path, tmp_path: Path, run: Run) -> None:
    out = tmp_path / "u"
    for option in (["--ram", "8192"], ["--block-size", "4096"], ["--codec", "stored"], ["--park", "4"]):
        assert_one_line_error(run("diff", *option, work / "v1", work / "v2", "-o", out), option[0], "--in-place",
                              status=2)
    assert_one_line_error(run(*_pack(work, "--ram", "8192", "-o", out)), "--ram", "--in-place", status=2)
    assert not out.exists()


def test_unknown_choices_and_numbers_name_the_option(work: Path, tmp_path: Path, run: Run) -> None:
    out = tmp_path / "u"
    cases = [
        (["diff", "--in-place", "--codec", "zip", work / "v1", work / "v2", "-o", out], "--codec"),
        (["diff", "--in-place", "--park", "99", work / "v1", work / "v2", "-o", out], "--park"),
        (["diff", "--in-place", "--ram", "0", work / "v1", work / "v2", "-o", out], "--ram"),
        (["keygen", "--algorithm", "rsa", "-o", out], "--algorithm"),
        (_pack(work, "--content-type", "movie", "-o", out), "--content-type"),
        (_pack(work, "--make", "", "-o", out), "--make"),
        (["powercut", work / "v1", work / "v2", "--every", "0"], "--every"),
        (["powercut", work / "v1", work / "v2", "--write-size", "3"], "--write-size"),
        (["device", "--imei", "12", "--once"], "--imei"),
        (["device", "--imei", "490154203237518", "--auth", "digest", "--once"], "--auth"),
        (["device", "--imei", "490154203237518", "--encoding", "json", "--once"], "--encoding"),
        (["device", "--imei", "490154203237518", "--lang", "english", "--once"], "--lang"),
        (["device", "--imei", "490154203237518", "--server", "127.0.0.1:8080", "--once"], "--server"),
        (["serve", "--port", "70000"], "--port"),
        (["assign", "--imei", "490154203237518", "--to", "1.1", "--wait", "--no-notify"], "--wait"),
        (["jobs", "--device", "12"], "--device"),
    ]
    for args, needle in cases:
        assert_one_line_error(run(*args), needle, status=2)
    assert not out.exists()


def test_key_files_that_fail_to_load_are_named(work: Path, tmp_path: Path, run: Run) -> None:
    out = tmp_path / "u.pkg"
    assert_one_line_error(run(*_pack(work, "-o", out)[:4], work / "garbage.pem", *_pack(work, "-o", out)[5:]),
                          "garbage.pem", "not a usable private signing key")
    assert_one_line_error(run(*_pack(work, "-o", out)[:4], work / "k.pub", *_pack(work, "-o", out)[5:]),
                          "k.pub", "not a usable private signing key")
    assert not out.exists()
    assert run(*_pack(work, "-o", out)).returncode == 0
    assert_one_line_error(run("verify", out, "--pubkey", work / "k"), "k:", "not a usable public key")
    assert_one_line_error(run("verify", out, "--pubkey", work / "garbage.pem"), "garbage.pem")


def test_outputs_over_inputs_are_refused_unless_forced(work: Path, tmp_path: Path, run: Run) -> None:
    d = tmp_path
    for name in ("v1", "v2", "k", "k.pub", "u.fdp"):
        (d / name).write_bytes((work / name).read_bytes())
    snapshot = {p.name: p.read_bytes() for p in d.iterdir()}
    assert run("build-repo", "-q", f"1.0={d / 'v1'}", f"1.1={d / 'v2'}", "--key", d / "k", "--make", "A",
               "--model", "M", "-o", d / "repo").returncode == 0
    cases = [
        (["diff", d / "v1", d / "v2", "-o", d / "v1"], "OLD"),
        (["diff", "--in-place", d / "v1", d / "v2", "-o", d / "v2"], "NEW"),
        (["apply", d / "v1", d / "u.fdp", "-o", d / "u.fdp"], "PATCH"),
        (["pack", d / "v1", d / "v2", "--key", d / "k", "--make", "A", "--model", "M", "--from", "1", "--to", "2",
          "-o", d / "k"], "--key"),
        (["chain", "--repo", d / "repo", "--make", "A", "--model", "M", "--from", "1.0", "--image", d / "v1",
          "--pubkey", d / "k.pub", "-o", d / "v1"], "--image"),
        (["keygen", "-o", d / "k"], "--force"),
    ]
    for args, needle in cases:
        assert_one_line_error(run(*args), needle, status=2)
    assert {p.name: p.read_bytes() for p in d.iterdir() if p.is_file()} == snapshot
    forced = run("diff", "-q", "--force", d / "v1", d / "v2", "-o", d / "v1")
    assert forced.returncode == 0, forced.stderr
    assert run("apply", "-q", work / "v1", d / "v1", "-o", d / "out").returncode == 0
    assert (d / "out").read_bytes() == (work / "v2").read_bytes()
    assert run("keygen", "-q", "--force", "-o", d / "k").returncode == 0
    assert (d / "k").read_bytes() != snapshot["k"]


def test_empty_images_are_refused(work: Path, tmp_path: Path, run: Run) -> None:
    out = tmp_path / "out"
    e = work / "empty"
    cases = [
        ["diff", e, work / "v2", "-o", out], ["diff", work / "v1", e, "-o", out],
        ["diff", "--in-place", e, work / "v2", "-o", out],
        ["pack", e, work / "v2", "--key", work / "k", "--make", "A", "--model", "M", "--from", "1", "--to", "2",
         "-o", out],
        ["pack", "-", e, "--full", "--from", "*", "--to", "2", "--key", work / "k", "--make", "A", "--model", "M",
         "-o", out],
        ["build-repo", f"1.0={e}", f"1.1={work / 'v2'}", "--key", work / "k", "--make", "A", "--model", "M",
         "-o", out],
        ["powercut", work / "v1", e],
    ]
    for args in cases:
        assert_one_line_error(run(*args), "empty")
    assert not out.exists()


def test_build_repo_refuses_a_version_given_twice(work: Path, tmp_path: Path, run: Run) -> None:
    out = tmp_path / "repo"
    assert_one_line_error(run("build-repo", f"1.0={work / 'v1'}", f"1.0={work / 'v2'}", "--key", work / "k",
                              "--make", "A", "--model", "M", "-o", out), "1.0", "twice", status=2)
    assert not out.exists()


def test_inspect_of_a_full_image_reads_as_words(work: Path, tmp_path: Path, run: Run) -> None:
    pkg = tmp_path / "full.fdpkg"
    made = run("pack", "-", work / "v2", "--full", "--from", "*", "--to", "1.1", "--key", work / "k", "--make",
               "Acme", "--model", "S1", "-o", pkg)
    assert made.returncode == 0, made.stderr
    shown = run("inspect", pkg)
    assert shown.returncode == 0, shown.stderr
    text = shown.stdout
    assert "None" not in text and "{" not in text
    assert "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855" not in text  # SHA-256 of nothing
    assert re.search(r"update\s+any version -> 1\.1", text)
    assert re.search(r"kind\s+full image: installs over any version", text)
    assert re.search(r"SIM\s+any SIM", text)
    assert re.search(r"signed by\s+key [0-9a-f]{16} \(Ed25519\)", text)
    described = json.loads(run("inspect", "--json", pkg).stdout)
    assert described["patch_kind"] == "full" and described["from_version"] == "*"


def _commands() -> list[tuple[str, HelpCommand]]:
    """Every command, those of command groups as "group command"."""
    import typer.main
    group = typer.main.get_command(app)
    out = []
    for name, cmd in group.commands.items():  # type: ignore[attr-defined]
        subcommands = getattr(cmd, "commands", None)
        out += [(f"{name} {sub}", c) for sub, c in subcommands.items()] if subcommands else [(name, cmd)]
    return sorted(out)


def test_help_reads_like_git(run: Run) -> None:
    names = [name for name, _ in _commands()]
    assert {"diff", "apply", "pack", "serve", "device", "assign", "jobs", "fleet"} <= set(names)
    assert {"account add", "capability set", "trap"} <= set(names)
    for name in names:
        shown = run(*name.split(), "--help")
        assert shown.returncode == 0, shown.stderr
        text = shown.stdout
        usage = text.splitlines()[0]
        assert usage.startswith(f"Usage: fotadelta {name}"), usage
        assert "{" not in usage and "<" not in text, (name, text)  # no {OLD}, <bool>, <list[Path]>, <path>
        assert not re.search(r"\bx[<>]=?\d", text), (name, text)  # no [x>=1]: the help says it in words
        assert "Examples:" in text and f"fotadelta {name}" in text.split("Examples:")[1], name


PRINTING = {"diff", "apply", "keygen", "pack", "verify", "build-repo", "chain", "serve", "device", "publish",
            "assign", "account add", "account remove", "capability set", "capability remove", "trap"}
DESCRIBING = {"info", "inspect", "jobs", "fleet", "account list", "account show", "capability list"}


def test_quiet_and_json_wherever_output_is_printed() -> None:
    for name, cmd in _commands():
        options = {opt for p in cmd.params for opt in getattr(p, "opts", [])}
        if name in PRINTING:
            assert {"-q", "--quiet"} <= options, name
        if name in PRINTING - {"serve"} or name in DESCRIBING:
            assert "--json" in options, name


def test_json_results(work: Path, tmp_path: Path, run: Run) -> None:
    made = json.loads(run("diff", "--json", work / "v1", work / "v2", "-o", tmp_path / "u.fdp").stdout)
    assert made["output"] == str(tmp_path / "u.fdp") and made["kind"] == "delta"
    applied = json.loads(run("apply", "--json", work / "v1", tmp_path / "u.fdp", "-o", tmp_path / "o").stdout)
    assert applied["bytes"] == len((work / "v2").read_bytes())
    key = json.loads(run("keygen", "--json", "-o", tmp_path / "k").stdout)
    assert len(key["key_id"]) == 16 and key["public_key"].endswith("k.pub")
    pkg = json.loads(run(*_pack(work, "--json", "--in-place", "-o", tmp_path / "p")).stdout)
    assert pkg["patch_kind"] == "in-place" and pkg["bytes"] == (tmp_path / "p").stat().st_size
    checked = json.loads(run("verify", "--json", tmp_path / "p", "--pubkey", work / "k.pub").stdout)
    assert checked["verified"] is True
    assert run("verify", "-q", tmp_path / "p", "--pubkey", work / "k.pub").stdout == ""


def test_serve_with_a_bad_database_url_is_one_line(tmp_path: Path, run: Run) -> None:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    assert_one_line_error(run("serve", "--db", "nosuchdb://x", "--port", port, "--data", tmp_path / "srv"), "--db")
