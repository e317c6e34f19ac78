"""The CLI's command table: `@command(name, help, add_args)` registers a sub-command.

Command modules import this module, never `cli.app`, so `app` can import them without a cycle.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

from gptailor_merge.core.registry import Registry

COMMANDS: Registry[tuple[str, Callable[[argparse.ArgumentParser], None], Callable]] = Registry("command")
"""name -> (help, add_args, run); registering a name twice is an error (core.Registry)."""


def command(name: str, help: str, add_args: Callable[[argparse.ArgumentParser], None]):
    """Register a sub-command: `add_args(parser)` declares its flags, the decorated function runs it."""

    def decorator(run: Callable) -> Callable:
        COMMANDS.add(name, (help, add_args, run))
        return run

    return decorator
