"""The ``saltline`` command. Server commands are delegated to ``python -m server`` (the SDK never
imports the server package)."""

from __future__ import annotations

import os
import sys

import typer

app = typer.Typer(help="Saltline: end-to-end encrypted messaging", no_args_is_help=True, add_completion=False)

_PASSTHROUGH = {
    "context_settings": {"allow_extra_args": True, "ignore_unknown_options": True},
    "add_help_option": False,
}


def _exec_server(args: list[str]) -> None:
    argv = [sys.executable, "-m", "server", *args]
    os.execv(sys.executable, argv)  # noqa: S606 - runs this interpreter on our own module


@app.command(**_PASSTHROUGH)
def serve(ctx: typer.Context) -> None:
    """Run the relay server (see `saltline serve --help`)."""
    _exec_server(["serve", *ctx.args])


@app.command(**_PASSTHROUGH)
def db(ctx: typer.Context) -> None:
    """Database migrations: `saltline db upgrade|downgrade|current`."""
    _exec_server(["db", *ctx.args])


def main() -> None:
    app()
