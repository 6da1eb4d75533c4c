"""The `linterp` command line: a click group whose sub-commands live in `pipeline.commands.*`.

Sub-commands are imported lazily, so `linterp --help` stays fast and a command's heavy imports (torch,
dask, zarr) are paid only when it runs.
"""
from __future__ import annotations

import importlib

import click

#: command name -> "module:attribute" of its click command.
COMMANDS = {
    "models": "pipeline.commands.models:models",
    "run": "pipeline.commands.models:run",
    "train": "pipeline.commands.training:train",
    "evaluate": "pipeline.commands.training:evaluate",
    "compute": "pipeline.commands.compute:compute",
    "verify": "pipeline.commands.verify:verify",
    "svd": "pipeline.commands.svd:svd",
    "export": "pipeline.commands.export:export",
    "video": "pipeline.commands.export:video",
    "classify": "pipeline.commands.classify:classify",
    "bundle": "pipeline.commands.bundle:bundle",
    "geometry": "pipeline.commands.geometry:geometry",
}


class LazyGroup(click.Group):
    """A click group that imports a sub-command's module only when that command is used."""

    def list_commands(self, ctx):
        return sorted(COMMANDS)

    def get_command(self, ctx, name):
        spec = COMMANDS.get(name)
        if spec is None:
            return None
        module, attr = spec.split(":")
        try:
            return getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as err:
            raise click.ClickException(f"command '{name}' is not available: {err}") from err


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="linterp")
def main():
    """linterp: linear interpreters of convolutional networks (y = F(x0)·x + r(x0))."""


if __name__ == "__main__":
    main()
