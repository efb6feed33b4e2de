"""The main job, and the campaign scenario."""

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from fotadelta.cli.common import CliError, command


@command()
def demo(
    pairs: Annotated[Path | None, typer.Option("--pairs", help="A directory of <pair>/old and <pair>/new to take "
                                               "the firmware from.", show_default=False)] = None,
    campaign: Annotated[bool, typer.Option("--campaign", help="Run the fleet scenario instead: a campaign in waves "
                                           "over --devices emulated devices, with a tester group, a failure "
                                           "threshold that suspends it, and the resume.")] = False,
    devices: Annotated[int, typer.Option("--devices", help="How many emulated devices the campaign scenario runs "
                                         "(at least 20).")] = 100,
    as_json: Annotated[bool, typer.Option("--json", help="Campaign scenario: progress on stderr, and a last line "
                                          "of JSON with the outcome on stdout.")] = False,
) -> None:
    """The main job: a DM server and emulated devices updating over OMA DM on real firmware."""
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
        raise CliError("--json goes with --campaign")
    from fotadelta import demo as demo_job
    try:
        demo_job.run(pairs)
    except demo_job.DemoError as exc:
        raise CliError(str(exc)) from None
