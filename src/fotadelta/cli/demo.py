"""The main job, and the campaign scenario."""

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from fotadelta.cli.common import CliError, UsageError, command


@command(examples=["fotadelta demo", "fotadelta demo --offline            # no network: a generated release chain",
                   "fotadelta demo --pairs firmware_samples/pairs",
                   "fotadelta demo --campaign --devices 500 --json"])
def demo(
    pairs: Annotated[Path | None, typer.Option("--pairs", metavar="DIR", help="A directory of PAIR/old and PAIR/new "
                                               "files to take the firmware from.", show_default=False)] = None,
    offline: Annotated[bool, typer.Option("--offline", help="Never touch the network: say what the real "
                                          "firmware would need and use a generated release chain unless it "
                                          "is already here.")] = False,
    cache: Annotated[Path | None, typer.Option("--cache", metavar="DIR", help="Per-user cache for the fetched "
                                               "firmware (default: $FOTADELTA_CACHE, else $XDG_CACHE_HOME/fotadelta, "
                                               "else ~/.cache/fotadelta).", show_default=False)] = None,
    campaign: Annotated[bool, typer.Option("--campaign", help="Run the fleet scenario instead: a campaign in waves "
                                           "over --devices emulated devices, with a tester group, a failure "
                                           "threshold that suspends it, and the resume.")] = False,
    devices: Annotated[int, typer.Option("--devices", metavar="N", min=20, help="How many emulated devices the "
                                         "campaign scenario runs (at least 20).")] = 100,
    as_json: Annotated[bool, typer.Option("--json", help="Campaign scenario: progress on stderr, and a last line "
                                          "of JSON with the outcome on stdout.")] = False,
) -> None:
    """The main job: a DM server and emulated devices updating over OMA DM on real firmware.

    The firmware comes from --pairs, else the repository's corpora when run from a checkout,
    else the per-user cache, else it is fetched (pinned, sha256-checked) into that cache; with
    --offline or without a network a generated release chain stands in, and the output says so.
    With --campaign: the fleet scenario (docs/fleet.md) instead.
    """
    if campaign and (pairs or offline or cache):
        raise UsageError("--pairs, --offline and --cache go with the main job, not with --campaign")
    if campaign:
        from fotadelta import campaign_demo
        out = Console(stderr=as_json, highlight=False, width=None if sys.stdout.isatty() else 120)
        try:
            summary = campaign_demo.run(devices, out)
        except campaign_demo.ScenarioError as exc:
            raise CliError(str(exc)) from None
        out.print(f"done in {summary.seconds:.1f} s")
        if as_json:
            sys.stdout.write(json.dumps(summary.line()) + "\n")
        if summary.lost or summary.succeeded + summary.failed != summary.devices:
            raise typer.Exit(1)
        return
    if as_json:
        raise UsageError("--json goes with --campaign")
    from fotadelta import demo as demo_job
    try:
        demo_job.run(pairs, offline=offline, cache=cache)
    except demo_job.DemoError as exc:
        raise CliError(str(exc)) from None
