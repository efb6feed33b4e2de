"""The main job."""

from pathlib import Path
from typing import Annotated

import typer

from fotadelta.cli.common import CliError, command


@command(examples=["fotadelta demo", "fotadelta demo --pairs firmware_samples/pairs"])
def demo(
    pairs: Annotated[Path | None, typer.Option("--pairs", metavar="DIR", help="A directory of PAIR/old and PAIR/new "
                                               "files to take the firmware from.", show_default=False)] = None,
) -> None:
    """The main job: a DM server and emulated devices updating over OMA DM on real firmware."""
    from fotadelta import demo as demo_job
    try:
        demo_job.run(pairs)
    except demo_job.DemoError as exc:
        raise CliError(str(exc)) from None
