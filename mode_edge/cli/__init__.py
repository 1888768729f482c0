"""The `mode-edge` command line: one module per command; each parses its options, calls the
stages, prints results. Errors a user can fix (UserError) print one line and exit 2."""

from __future__ import annotations

import importlib
import sys
from typing import Optional

from mode_edge.cli.app import app, console
from mode_edge.errors import UserError

# each module registers its command on `app`; this order is the order of `mode-edge --help`
COMMANDS = ("convert", "calibrate", "plan", "pack", "inspect", "eval", "chat", "serve", "runtime")
for _name in COMMANDS:
    importlib.import_module(f"mode_edge.cli.{_name}")


def main(argv: Optional[list[str]] = None) -> None:
    import mode_edge.card

    mode_edge.card.ARGV = list(argv) if argv is not None else None
    try:
        app(args=argv, standalone_mode=True)
    except UserError as e:
        console.print(f"[red]error:[/red] {e}", highlight=False, soft_wrap=True)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        console.print("[red]interrupted[/red]")
        sys.exit(130)
