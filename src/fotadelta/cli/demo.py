"""The main job."""

from pathlib import Path
from typing import Annotated

import typer

from fotadelta.cli.common import CliError, command


@command(examples=["fotadelta demo", "fotadelta demo --offline            # no network: a generated release chain",
                   "fotadelta demo --pairs firmware_samples/pairs"])
def demo(
    pairs: Annotated[Path | None, typer.Option("--pairs", metavar="DIR", help="A directory of PAIR/old and PAIR/new "
                                               "files to take the firmware from.", show_default=False)] = None,
    offline: Annotated[bool, typer.Option("--offline", help="Never touch the network: say what the real "
                                          "firmware would need and use a generated release chain unless it "
                                          "is already here.")] = False,
    cache: Annotated[Path | None, typer.Option("--cache", metavar="DIR", help="Per-user cache for the fetched "
                                               "firmware (default: $FOTADELTA_CACHE, else $XDG_CACHE_HOME/fotadelta, "
                                               "else ~/.cache/fotadelta).", show_default=False)] = None,
) -> None:
    """The main job: a DM server and emulated devices updating over OMA DM on real firmware.

    The firmware comes from --pairs, else the repository's corpora when run from a checkout,
    else the per-user cache, else it is fetched (pinned, sha256-checked) into that cache; with
    --offline or without a network a generated release chain stands in, and the output says so.
    """
    from fotadelta import demo as demo_job
    try:
        demo_job.run(pairs, offline=offline, cache=cache)
    except demo_job.DemoError as exc:
        raise CliError(str(exc)) from None
