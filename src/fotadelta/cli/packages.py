"""Signed update packages and repositories: keygen, pack, verify, inspect, build-repo, chain."""

import json
import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from fotadelta import inplace
from fotadelta.cli.common import CliError, command, count_bar, grid, human_size


@command()
def keygen(
    output: Annotated[Path, typer.Option("--output", "-o", help="Private key file (PEM); the public key goes to "
                                         "OUTPUT.pub.", show_default=False)],
    algorithm: Annotated[str, typer.Option("--algorithm", help="ed25519 or p256 (ECDSA P-256).")] = "ed25519",
) -> None:
    """Make a package-signing key pair."""
    from fotadelta.package import signing
    algorithms = {"ed25519": signing.Algorithm.ED25519, "p256": signing.Algorithm.ECDSA_P256_SHA256}
    if algorithm not in algorithms:
        raise CliError(f"unknown algorithm {algorithm!r} (choose ed25519 or p256)")
    key = signing.generate(algorithms[algorithm])
    pub = output.with_name(output.name + ".pub")
    output.write_bytes(signing.private_pem(key))
    os.chmod(output, 0o600)
    pub.write_bytes(signing.public_pem(key.public_key()))
    sys.stdout.write(f"{output}: private key; {pub}: public key; key id {signing.key_id(key.public_key()).hex()}\n")


@command()
def pack(
    old: Annotated[Path, typer.Argument(metavar="OLD", help="The image devices have now.", show_default=False)],
    new: Annotated[Path, typer.Argument(metavar="NEW", help="The image to update them to.", show_default=False)],
    key: Annotated[Path, typer.Option("--key", help="Private signing key (PEM).", show_default=False)],
    make: Annotated[str, typer.Option("--make", help="Device manufacturer.", show_default=False)],
    model: Annotated[str, typer.Option("--model", help="Device model.", show_default=False)],
    from_version: Annotated[str, typer.Option("--from", help="Version the package updates from.",
                                              show_default=False)],
    to_version: Annotated[str, typer.Option("--to", help="Version it updates to.", show_default=False)],
    output: Annotated[Path, typer.Option("--output", "-o", help="Where to write the package.", show_default=False)],
    validation_string: Annotated[str | None, typer.Option("--validation-string", help="Operator's 16-byte SIM "
                                                          "validation string, 32 hex digits.",
                                                          show_default=False)] = None,
    content_type: Annotated[str, typer.Option("--content-type", help="firmware, application or configuration "
                                              "(OLD and NEW then hold JSON objects of string values).")]
    = "firmware",
    target: Annotated[str, typer.Option("--target", help="What is updated: firmware, an application's file name, "
                                        "a configuration's name.")] = "firmware",
    in_place: Annotated[bool, typer.Option("--in-place", help="Carry an in-place patch.")] = False,
    full: Annotated[bool, typer.Option("--full", help="Carry the full new image (with --from '*' it installs over "
                                       "any version and OLD is not read).")] = False,
    block_size: Annotated[int, typer.Option("--block-size", help="In-place: erase-block size.")]
    = inplace.DEFAULT_BLOCK,
    ram: Annotated[int | None, typer.Option("--ram", help="In-place: work RAM limit, bytes.",
                                            show_default=False)] = None,
    security_version: Annotated[int, typer.Option("--security-version", help="NEW's anti-rollback number: devices "
                                                  "refuse packages below the one they run.")] = 0,
    allow_downgrade: Annotated[bool, typer.Option("--allow-downgrade", help="Sign the package as an allowed "
                                                  "downgrade (installs below the device's security "
                                                  "version).")] = False,
) -> None:
    """Make a signed update package taking OLD to NEW."""
    from fotadelta import package
    from fotadelta.package import signing
    validation = package.NO_VALIDATION
    if validation_string is not None:
        try:
            validation = bytes.fromhex(validation_string)
        except ValueError:
            raise CliError("--validation-string must be hexadecimal") from None
        if len(validation) != package.VALIDATION_LEN:
            raise CliError(f"--validation-string must be {package.VALIDATION_LEN} bytes (32 hex digits)")
    kinds = {t.name.lower(): t for t in package.ContentType}
    if content_type not in kinds:
        raise CliError(f"unknown content type {content_type!r} (choose {', '.join(kinds)})")
    if full and in_place:
        raise CliError("--full and --in-place exclude each other")
    old_bytes = b"" if from_version == package.ANY_VERSION else old.read_bytes()
    new_bytes = new.read_bytes()
    if kinds[content_type] == package.ContentType.CONFIGURATION:
        from fotadelta.agent import config_bytes
        old_bytes, new_bytes = (config_bytes(json.loads(b)) for b in (old_bytes, new_bytes))
    made = package.pack(old_bytes, new_bytes, signing.load_private(key.read_bytes()), make=make, model=model,
                        from_version=from_version, to_version=to_version, content_type=kinds[content_type],
                        target=target, validation=validation, in_place=in_place, block_size=block_size, ram=ram,
                        full_image=full, security_version=security_version, allow_downgrade=allow_downgrade)
    output.write_bytes(made)
    sys.stdout.write(f"{output}: {human_size(len(made))}, {make} {model} {from_version} -> {to_version}\n")


@command()
def verify(
    pkg: Annotated[Path, typer.Argument(metavar="PKG", help="The package file.", show_default=False)],
    pubkey: Annotated[list[Path], typer.Option("--pubkey", help="A trusted public key (PEM); repeat for several.",
                                               show_default=False)],
) -> None:
    """Check a package's structure and signature against trusted keys; exit 1 if it fails."""
    from fotadelta import package
    from fotadelta.package import signing
    trust = signing.TrustStore.of(signing.load_public(p.read_bytes()) for p in pubkey)
    checked = package.verify(pkg.read_bytes(), trust)
    sys.stdout.write(f"{pkg}: signature OK (key {checked.signer.hex()}, {checked.algorithm.name.lower()})\n")


@command()
def inspect(
    pkg: Annotated[Path, typer.Argument(metavar="PKG", help="The package file.", show_default=False)],
    as_json: Annotated[bool, typer.Option("--json", help="Print the description as JSON.")] = False,
) -> None:
    """Describe a package (without checking its signature: use `verify` for that)."""
    from fotadelta import package
    described = package.parse(pkg.read_bytes()).to_dict()
    if as_json:
        sys.stdout.write(json.dumps(described, indent=2) + "\n")
        return
    table = grid([(k.replace("_", " "), json.dumps(v) if isinstance(v, dict) else str(v))
                   for k, v in described.items()])
    Console(highlight=False).print(table)


@command("build-repo")
def build_repo(
    releases: Annotated[list[str], typer.Argument(metavar="VERSION=IMAGE...", help="Released images, oldest first.",
                                                  show_default=False)],
    key: Annotated[Path, typer.Option("--key", help="Private signing key (PEM).", show_default=False)],
    make: Annotated[str, typer.Option("--make", help="Device manufacturer.", show_default=False)],
    model: Annotated[str, typer.Option("--model", help="Device model.", show_default=False)],
    output: Annotated[Path, typer.Option("--output", "-o", help="Repository directory.", show_default=False)],
    block_size: Annotated[int, typer.Option("--block-size", help="Erase-block size of the devices.")]
    = inplace.DEFAULT_BLOCK,
    ram: Annotated[int | None, typer.Option("--ram", help="Work RAM limit of the devices, bytes (default: one "
                                            "block + 4 KiB).", show_default=False)] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
    full_images: Annotated[bool, typer.Option("--full-images", help="Also package each release as a full image "
                                              "installable over any version.")] = False,
    workers: Annotated[int | None, typer.Option("--workers", help="Local worker processes (default: one per "
                                                "core).", show_default=False)] = None,
    scheduler: Annotated[str | None, typer.Option("--scheduler", help="Compute the deltas on the Dask cluster "
                                                  "of this scheduler, e.g. tcp://HOST:8786 (extra 'farm').",
                                                  show_default=False)] = None,
    cache: Annotated[Path | None, typer.Option("--cache", help="Delta cache directory (default: "
                                               "$XDG_CACHE_HOME/fotadelta/deltas or ~/.cache/fotadelta/deltas).",
                                               show_default=False)] = None,
    manifest: Annotated[Path | None, typer.Option("--manifest", help="Where to write the JSON manifest of the "
                                                  "build (default: OUTPUT/build-manifest.json).",
                                                  show_default=False)] = None,
) -> None:
    """Package every release against every later one and write the repository index.

    Deltas come from the cache or are computed in parallel (local processes, or a Dask cluster);
    the manifest lists per package its delta's key, sizes, cache status, time and worker."""
    from fotadelta import atomic, farm
    from fotadelta.package import signing
    if scheduler is not None and workers is not None:
        raise CliError("--workers sets the local pool; a Dask cluster has its own workers")
    if workers is not None and workers < 1:
        raise CliError("--workers must be at least 1")
    images = []
    for item in releases:
        version, sep, path = item.partition("=")
        if not sep or not version or not path:
            raise CliError(f"{item!r}: give releases as VERSION=IMAGE")
        images.append((version, Path(path).read_bytes()))
    if len(images) < 2:
        raise CliError("a repository needs at least two releases")
    signer = signing.load_private(key.read_bytes())
    delta_cache = farm.DeltaCache(cache if cache is not None else farm.default_dir())
    try:
        with (farm.DaskCluster(scheduler) if scheduler is not None
              else farm.LocalPool(workers or farm.default_workers())) as executor, \
                count_bar("packaging", quiet) as progress:
            built = farm.build_repo(images, output, signer, make=make, model=model, block_size=block_size, ram=ram,
                                    executor=executor, cache=delta_cache, progress=progress,
                                    full_images=full_images)
    except farm.FarmError as exc:
        raise CliError(str(exc)) from None
    report = built.manifest()
    atomic.write_bytes(manifest or output / "build-manifest.json", (json.dumps(report, indent=2) + "\n").encode())
    totals = report["totals"]
    sys.stdout.write(f"{output}: {totals['packages']} packages for {make} {model}, {totals['package_bytes']:,} bytes; "
                     f"{totals['computed']} deltas computed ({built.executor or 'none'}), "
                     f"{totals['from_cache']} from the cache, in {totals['wall_seconds']:.1f} s\n")


@command("chain")
def chain_command(
    repo: Annotated[Path, typer.Option("--repo", help="Repository directory.", show_default=False)],
    make: Annotated[str, typer.Option("--make", help="Device manufacturer.", show_default=False)],
    model: Annotated[str, typer.Option("--model", help="Device model.", show_default=False)],
    from_version: Annotated[str, typer.Option("--from", help="The device's version.", show_default=False)],
    image: Annotated[Path, typer.Option("--image", help="The device's current image.", show_default=False)],
    pubkey: Annotated[list[Path], typer.Option("--pubkey", help="A trusted public key (PEM); repeat for several.",
                                               show_default=False)],
    to_version: Annotated[str, typer.Option("--to", help="Target version, or latest.")] = "latest",
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write the updated image here.",
                                                show_default=False)] = None,
) -> None:
    """Plan the cheapest package chain and apply it to an emulated device in one session."""
    from fotadelta import chain
    from fotadelta.agent import Device, Outcome
    from fotadelta.package import signing
    from fotadelta.sim import Sim, handoff
    index = chain.Index.load(repo)
    target = None if to_version == "latest" else to_version
    steps = chain.plan(index, make, model, from_version, target)
    sys.stdout.write("plan: " + (" -> ".join([from_version, *(s.to_version for s in steps)]) if steps
                                 else "already up to date") + f" ({sum(s.size for s in steps):,} bytes)\n")
    from fotadelta import package
    # Full images need no particular block size; the device's comes from its in-place packages.
    block_size = next((b for b in (package.parse((repo / e.file).read_bytes()).manifest.block_size
                                   for e in index.entries if (e.make, e.model) == (make, model)) if b),
                      inplace.DEFAULT_BLOCK)
    trust = signing.TrustStore.of(signing.load_public(p.read_bytes()) for p in pubkey)
    device = Device.with_image(image.read_bytes(), make=make, model=model, version=from_version,
                                       trust=trust, nvm=handoff(Sim()), block_size=block_size,
                                       park_blocks=inplace.MAX_PARK)

    def report(step: chain.Entry, o: Outcome) -> None:
        sys.stdout.write(f"  {step.from_version} -> {step.to_version}: {o.code.value} {o.message}\n")

    outcome = chain.run(device, repo, target, report=report)
    if not outcome.ok:
        raise CliError(f"update stopped: {outcome.code.value} {outcome.message}")
    if output is not None:
        output.write_bytes(device.image())
