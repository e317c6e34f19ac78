"""The command line (`python -m gptailor_merge`, the `gptailor-merge` script): `app` parses
and dispatches, `registry` holds the `@command` table, one module per group of commands."""

from gptailor_merge.cli.app import main

__all__ = ["main"]
