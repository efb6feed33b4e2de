"""Signed update packages and repositories: keygen, pack, verify, inspect, build-repo, chain."""

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from fotadelta import inplace
from fotadelta.cli.common import (
    CliError,
    UsageError,
    check_block_size,
    check_name,
    check_outputs,
    check_validation_string,
    command,
    count_bar,
    emit,
    grid,
    human_size,
    load_private_key,
    load_public_keys,
    one_of,
    read_image,
)
from fotadelta.files import write_atomic

FORCE_HELP = "Write the output even if it is one of the input files."
KEY_HELP = "The private signing key (PEM, from fotadelta keygen)."
PUBKEY_HELP = "A trusted public key (PEM); repeat for several."
ALGORITHMS = ("ed25519", "p256")
CONTENT_TYPES = ("firmware", "application", "configuration")


def _make(help: str = "Device manufacturer, e.g. Acme.") -> Any:
    return typer.Option("--make", metavar="MAKE", callback=check_name, help=help, show_default=False)


def _model(help: str = "Device model, e.g. S1.") -> Any:
    return typer.Option("--model", metavar="MODEL", callback=check_name, help=help, show_default=False)


@command(examples=[
    "fotadelta keygen -o signing.key                   # and signing.key.pub",
    "fotadelta keygen --algorithm p256 -o ecdsa.key",
])
def keygen(
    output: Annotated[Path, typer.Option("--output", "-o", metavar="FILE", help="Private key file (PEM); the public "
                                         "key goes to FILE.pub.", show_default=False)],
    algorithm: Annotated[str, typer.Option("--algorithm", metavar="ed25519|p256", callback=one_of(*ALGORITHMS),
                                           help="Ed25519, or ECDSA on P-256.")] = "ed25519",
    force: Annotated[bool, typer.Option("--force", "-f", help="Replace an existing key pair.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print nothing on success.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the key files and key id as JSON.")] = False,
) -> None:
    """Make a package-signing key pair."""
    from fotadelta.package import signing
    pub = output.with_name(output.name + ".pub")
    existing = [str(p) for p in (output, pub) if p.exists()]
    if existing and not force:
        raise UsageError(f"{' and '.join(existing)} exist{'s' if len(existing) == 1 else ''}: a key is not "
                         "replaced unless you give --force (packages signed with it would no longer verify)")
    key = signing.generate(signing.Algorithm.ED25519 if algorithm == "ed25519" else signing.Algorithm.ECDSA_P256_SHA256)
    write_atomic(output, signing.private_pem(key), mode=0o600)
    write_atomic(pub, signing.public_pem(key.public_key()))
    key_id = signing.key_id(key.public_key()).hex()
    emit(quiet, as_json, f"{output}: private key; {pub}: public key; key id {key_id}",
         {"private_key": str(output), "public_key": str(pub), "key_id": key_id, "algorithm": algorithm})


@command(examples=[
    "fotadelta pack v1.bin v2.bin --key signing.key --make Acme --model S1 --from 1.0 --to 1.1 \\",
    "    --in-place -o update.fdpkg                 # for single-slot devices",
    "fotadelta pack - v2.bin --full --from '*' --to 1.1 --key signing.key --make Acme --model S1 -o full.fdpkg",
])
def pack(
    old: Annotated[Path, typer.Argument(metavar="OLD", help="The image devices have now (not read for --from '*').",
                                        show_default=False)],
    new: Annotated[Path, typer.Argument(metavar="NEW", help="The image to update them to.", show_default=False)],
    key: Annotated[Path, typer.Option("--key", metavar="FILE", help=KEY_HELP, show_default=False)],
    make: Annotated[str, _make()],
    model: Annotated[str, _model()],
    from_version: Annotated[str, typer.Option("--from", metavar="VERSION", callback=check_name,
                                              help="Version the package updates from ('*': any, with --full).",
                                              show_default=False)],
    to_version: Annotated[str, typer.Option("--to", metavar="VERSION", callback=check_name,
                                            help="Version it updates to.", show_default=False)],
    output: Annotated[Path, typer.Option("--output", "-o", metavar="FILE", help="Where to write the package.",
                                         show_default=False)],
    validation_string: Annotated[str | None, typer.Option("--validation-string", metavar="HEX",
                                                          callback=check_validation_string,
                                                          help="The operator's 16-byte SIM validation string, 32 hex "
                                                          "digits (default: installs with any SIM).",
                                                          show_default=False)] = None,
    content_type: Annotated[str, typer.Option("--content-type", metavar="firmware|application|configuration",
                                              callback=one_of(*CONTENT_TYPES),
                                              help="What the package carries (configurations: OLD and NEW hold JSON "
                                              "objects of string values).")] = "firmware",
    target: Annotated[str, typer.Option("--target", metavar="NAME", callback=check_name,
                                        help="What is updated: firmware, an application's file name, a "
                                        "configuration's name.")] = "firmware",
    in_place: Annotated[bool, typer.Option("--in-place", help="Carry an in-place patch (single-slot devices).")]
    = False,
    full: Annotated[bool, typer.Option("--full", help="Carry the full new image (with --from '*' it installs over "
                                       "any version and OLD is not read).")] = False,
    block_size: Annotated[int | None, typer.Option("--block-size", metavar="BYTES", callback=check_block_size,
                                                   help=f"In-place: erase-block size (default "
                                                   f"{inplace.DEFAULT_BLOCK}).", show_default=False)] = None,
    ram: Annotated[int | None, typer.Option("--ram", metavar="BYTES", min=1, help="In-place: work RAM limit "
                                            "(default: one block + 4 KiB).", show_default=False)] = None,
    force: Annotated[bool, typer.Option("--force", "-f", help=FORCE_HELP)] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print nothing on success.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the package's manifest as JSON.")] = False,
    security_version: Annotated[int, typer.Option("--security-version", metavar="N", min=0, max=0xFFFF_FFFF, help="NEW's "
                                                  "anti-rollback number: devices refuse packages below the one "
                                                  "they run.")] = 0,
    allow_downgrade: Annotated[bool, typer.Option("--allow-downgrade", help="Sign the package as an allowed "
                                                  "downgrade (installs below the device's security "
                                                  "version).")] = False,
) -> None:
    """Make a signed update package taking OLD to NEW."""
    from fotadelta import package
    if full and in_place:
        raise UsageError("--full and --in-place exclude each other")
    if not in_place and (stray := [n for n, v in (("--block-size", block_size), ("--ram", ram)) if v is not None]):
        raise UsageError(f"{' and '.join(stray)} only with --in-place")
    any_version = from_version == package.ANY_VERSION
    if any_version and not full:
        raise UsageError(f"--from '{package.ANY_VERSION}' (any version) takes --full: only a full image installs "
                         "over any version")
    if to_version == package.ANY_VERSION:
        raise UsageError(f"--to '{package.ANY_VERSION}' is not a version")
    check_outputs({"-o": output}, {"OLD": None if any_version else old, "NEW": new, "--key": key}, force)
    signer = load_private_key(key)
    what = "file" if content_type != "firmware" else "image"
    old_bytes = b"" if any_version else read_image(old, f"OLD {what}")
    new_bytes = read_image(new, f"NEW {what}")
    kind = package.ContentType[content_type.upper()]
    if kind == package.ContentType.CONFIGURATION:
        from fotadelta.agent import config_bytes
        old_bytes, new_bytes = (config_bytes(_settings(b, p)) for b, p in ((old_bytes, old), (new_bytes, new)))
    try:
        made = package.pack(old_bytes, new_bytes, signer, make=make, model=model, from_version=from_version,
                            to_version=to_version, content_type=kind, target=target,
                            validation=bytes.fromhex(validation_string) if validation_string
                            else package.NO_VALIDATION, in_place=in_place,
                            block_size=block_size or inplace.DEFAULT_BLOCK, ram=ram, full_image=full,
                            security_version=security_version, allow_downgrade=allow_downgrade)
    except ValueError as exc:  # (in place: Intel HEX or UF2 images that lay out no flash image)
        raise CliError(str(exc)) from None
    write_atomic(output, made)
    emit(quiet, as_json, f"{output}: {human_size(len(made))}, {make} {model} {from_version} -> {to_version}",
         {"output": str(output), "bytes": len(made), **package.parse(made).to_dict()})


def _settings(data: bytes, path: Path) -> dict[str, str]:
    try:
        settings = json.loads(data)
    except ValueError as exc:
        raise CliError(f"{path}: not JSON ({exc})") from None
    if not isinstance(settings, dict) or not all(isinstance(v, str) for v in settings.values()):
        raise CliError(f"{path}: a configuration is a JSON object of string values")
    return settings


@command(examples=["fotadelta verify update.fdpkg --pubkey signing.key.pub",
                   "fotadelta verify -q update.fdpkg --pubkey old.pub --pubkey new.pub && echo trusted"])
def verify(
    pkg: Annotated[Path, typer.Argument(metavar="PACKAGE", help="The package file.", show_default=False)],
    pubkey: Annotated[list[Path], typer.Option("--pubkey", metavar="FILE", help=PUBKEY_HELP, show_default=False)],
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print nothing; the exit status tells.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the signer as JSON.")] = False,
) -> None:
    """Check a package's structure and signature against trusted keys; exit 1 if it fails."""
    from fotadelta import package
    checked = package.verify(pkg.read_bytes(), load_public_keys(pubkey))
    algorithm = checked.algorithm.name.lower()
    emit(quiet, as_json, f"{pkg}: signature OK (key {checked.signer.hex()}, {algorithm})",
         {"package": str(pkg), "verified": True, "key_id": checked.signer.hex(), "algorithm": algorithm})


@command(examples=["fotadelta inspect update.fdpkg", "fotadelta inspect --json update.fdpkg"])
def inspect(
    pkg: Annotated[Path, typer.Argument(metavar="PACKAGE", help="The package file.", show_default=False)],
    as_json: Annotated[bool, typer.Option("--json", help="Print the manifest as JSON.")] = False,
) -> None:
    """Describe a package (without checking its signature: use `verify` for that)."""
    from fotadelta import package
    data = pkg.read_bytes()
    parsed = package.parse(data)
    if as_json:
        sys.stdout.write(json.dumps(parsed.to_dict(), indent=2) + "\n")
        return
    Console(highlight=False).print(grid(describe_package(parsed, len(data))))


def describe_package(p: Any, size: int) -> list[tuple[str, str]]:
    """A package's manifest in words, one row per fact."""
    from fotadelta import package
    m = p.manifest
    any_version = m.from_version == package.ANY_VERSION
    if m.patch_kind == package.PatchKind.IN_PLACE:
        kind = (f"in-place patch: a single-slot device rewrites its slot in {m.block_size:,}-byte erase blocks, "
                f"with {m.ram_need:,} B of work RAM")
    elif m.patch_kind == package.PatchKind.FULL:
        kind = "full image" + (": installs over any version" if any_version else "")
    else:
        kind = "plain patch: the device writes the new image beside the old one (two slots)"
    rows = [
        ("content", f"{m.content_type.name.lower()} ({m.target})" if m.target != "firmware" else "firmware"),
        ("device", f"{m.make} {m.model}"),
        ("update", f"{'any version' if any_version else m.from_version} -> {m.to_version}"),
        ("kind", kind),
        ("security version", f"{m.security_version}" + ("; signed as an allowed downgrade: installs below the "
                                                         "device's security version" if m.allow_downgrade else
                                                         "; devices running a higher one refuse it")),
        ("SIM", f"operator's validation string {m.validation.hex()}" if m.secured
         else "any SIM (no operator validation string)"),
        ("source", "none: a full image does not read the old one" if any_version
         else f"{human_size(m.source_size)}, SHA-256 {m.source_sha256.hex()}"),
        ("target", f"{human_size(m.target_size)}, SHA-256 {m.target_sha256.hex()}"),
        ("size", f"{human_size(size)} ({human_size(len(p.payload))} payload)"),
        ("signed by", f"key {p.signer.hex()} ({_ALGORITHM_NAMES.get(p.algorithm.name, p.algorithm.name)}); "
         "not checked here: fotadelta verify checks it"),
    ]
    return rows


_ALGORITHM_NAMES = {"ED25519": "Ed25519", "ECDSA_P256_SHA256": "ECDSA P-256 with SHA-256"}


@command("build-repo", examples=[
    "fotadelta build-repo 1.0=v1.bin 1.1=v2.bin 1.2=v3.bin --key signing.key --make Acme --model S1 -o repo/",
    "fotadelta build-repo 1.0=v1.bin 1.1=v2.bin --full-images --key signing.key --make Acme --model S1 -o repo/",
])
def build_repo(
    releases: Annotated[list[str], typer.Argument(metavar="VERSION=IMAGE...", help="Released images, oldest first.",
                                                  show_default=False)],
    key: Annotated[Path, typer.Option("--key", metavar="FILE", help=KEY_HELP, show_default=False)],
    make: Annotated[str, _make()],
    model: Annotated[str, _model()],
    output: Annotated[Path, typer.Option("--output", "-o", metavar="DIR", help="Repository directory.",
                                         show_default=False)],
    block_size: Annotated[int, typer.Option("--block-size", metavar="BYTES", callback=check_block_size,
                                            help="Erase-block size of the devices.")] = inplace.DEFAULT_BLOCK,
    ram: Annotated[int | None, typer.Option("--ram", metavar="BYTES", min=1, help="Work RAM limit of the devices "
                                            "(default: one block + 4 KiB).", show_default=False)] = None,
    full_images: Annotated[bool, typer.Option("--full-images", help="Also package each release as a full image "
                                              "installable over any version.")] = False,
    workers: Annotated[int | None, typer.Option("--workers", metavar="N", min=1, help="Local worker processes "
                                                "(default: one per core).", show_default=False)] = None,
    scheduler: Annotated[str | None, typer.Option("--scheduler", metavar="ADDRESS", help="Compute the deltas on the "
                                                  "Dask cluster of this scheduler, e.g. tcp://HOST:8786 (extra "
                                                  "'farm').", show_default=False)] = None,
    cache: Annotated[Path | None, typer.Option("--cache", metavar="DIR", help="Delta cache directory (default: "
                                               "$XDG_CACHE_HOME/fotadelta/deltas or ~/.cache/fotadelta/deltas).",
                                               show_default=False)] = None,
    manifest: Annotated[Path | None, typer.Option("--manifest", metavar="FILE", help="Where to write the JSON "
                                                  "manifest of the build (default: DIR/build-manifest.json).",
                                                  show_default=False)] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar, nothing printed on success.")]
    = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the build manifest as JSON.")] = False,
) -> None:
    """Package every release against every later one and write the repository index.

    Deltas come from the cache or are computed in parallel (local processes, or a Dask cluster);
    the manifest lists per package its delta's key, sizes, cache status, time and worker."""
    from fotadelta import farm
    if scheduler is not None and workers is not None:
        raise UsageError("--workers sets the local pool; a Dask cluster has its own workers")
    images: list[tuple[str, bytes]] = []
    for item in releases:
        version, sep, path = item.partition("=")
        if not sep or not version or not path:
            raise UsageError(f"{item!r}: give releases as VERSION=IMAGE")
        check_release_version(version)
        if any(v == version for v, _ in images):
            raise UsageError(f"version {version} is given twice: each release needs its own version")
        images.append((version, read_image(Path(path), f"release {version}")))
    if len(images) < 2:
        raise UsageError("a repository needs at least two releases")
    if output.exists() and not output.is_dir():
        raise CliError(f"{output}: not a directory")
    signer = load_private_key(key)
    delta_cache = farm.DeltaCache(cache if cache is not None else farm.default_dir())
    try:
        with (farm.DaskCluster(scheduler) if scheduler is not None
              else farm.LocalPool(workers or farm.default_workers())) as executor, \
                count_bar("packaging", quiet or as_json) as progress:
            built = farm.build_repo(images, output, signer, make=make, model=model, block_size=block_size, ram=ram,
                                    executor=executor, cache=delta_cache, progress=progress,
                                    full_images=full_images)
    except farm.FarmError as exc:
        raise CliError(str(exc)) from None
    report = built.manifest()
    write_atomic(manifest or output / "build-manifest.json", (json.dumps(report, indent=2) + "\n").encode())
    totals = report["totals"]
    emit(quiet, as_json, f"{output}: {totals['packages']} packages for {make} {model}, {totals['package_bytes']:,} "
         f"bytes; {totals['computed']} deltas computed ({built.executor or 'none'}), {totals['from_cache']} from the "
         f"cache, in {totals['wall_seconds']:.1f} s", report)


def check_release_version(version: str) -> None:
    from fotadelta import package
    try:
        check_name(version)
    except typer.BadParameter as exc:
        raise UsageError(f"release version {exc}") from None
    if version == package.ANY_VERSION:
        raise UsageError(f"{package.ANY_VERSION!r} is not a release version")


@command("chain", examples=[
    "fotadelta chain --repo repo/ --make Acme --model S1 --from 1.0 --image v1.bin --pubkey signing.key.pub "
    "-o out.bin",
])
def chain_command(
    repo: Annotated[Path, typer.Option("--repo", metavar="DIR", help="Repository directory (from build-repo).",
                                       show_default=False)],
    make: Annotated[str, _make()],
    model: Annotated[str, _model()],
    from_version: Annotated[str, typer.Option("--from", metavar="VERSION", callback=check_name,
                                              help="The device's version.", show_default=False)],
    image: Annotated[Path, typer.Option("--image", metavar="FILE", help="The device's current image.",
                                        show_default=False)],
    pubkey: Annotated[list[Path], typer.Option("--pubkey", metavar="FILE", help=PUBKEY_HELP, show_default=False)],
    to_version: Annotated[str, typer.Option("--to", metavar="VERSION", callback=check_name,
                                            help="Target version, or latest.")] = "latest",
    output: Annotated[Path | None, typer.Option("--output", "-o", metavar="FILE", help="Write the updated image "
                                                "here.", show_default=False)] = None,
    force: Annotated[bool, typer.Option("--force", "-f", help=FORCE_HELP)] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print nothing on success.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the plan and each step's result as JSON.")] = False,
) -> None:
    """Plan the cheapest package chain and apply it to an emulated device in one session."""
    from fotadelta import chain, package
    from fotadelta.agent import Device, Outcome
    from fotadelta.dm.fumo import describe
    from fotadelta.sim import Sim, handoff
    check_outputs({"-o": output}, {"--image": image, **{f"--pubkey {p}": p for p in pubkey}}, force)
    index = chain.Index.load(repo)
    target = None if to_version == "latest" else to_version
    steps = chain.plan(index, make, model, from_version, target)
    trust = load_public_keys(pubkey)

    def say(text: str) -> None:
        if not (quiet or as_json):
            sys.stdout.write(text + "\n")

    say("plan: " + (" -> ".join([from_version, *(s.to_version for s in steps)]) if steps else "already up to date")
        + f" ({sum(s.size for s in steps):,} bytes)")
    # Full images need no particular block size; the device's comes from its in-place packages.
    block_size = next((b for b in (package.parse((repo / e.file).read_bytes()).manifest.block_size
                                   for e in index.entries if (e.make, e.model) == (make, model)) if b),
                      inplace.DEFAULT_BLOCK)
    device = Device.with_image(read_image(image, "--image"), make=make, model=model, version=from_version,
                               trust=trust, nvm=handoff(Sim()), block_size=block_size, park_blocks=inplace.MAX_PARK)
    results: list[dict[str, object]] = []

    def report(step: chain.Entry, o: Outcome) -> None:
        results.append({"from": step.from_version, "to": step.to_version, "result": int(o.code),
                        "meaning": describe(int(o.code)), "message": o.message})
        say(f"  {step.from_version} -> {step.to_version}: {int(o.code)} {o.message}")

    outcome = chain.run(device, repo, target, report=report)
    if not outcome.ok:
        raise CliError(f"update stopped: FUMO {int(outcome.code)} ({describe(int(outcome.code))}): {outcome.message}")
    if output is not None:
        write_atomic(output, device.image())
    emit(True, as_json, "", {"plan": [s.to_version for s in steps], "steps": results, "version": device.version,
                             "output": None if output is None else str(output)})
