"""The command-line contract every ftl-ct program keeps (DESIGN.md, "Command-line contract").

Bad input -> one line on stderr and a non-zero exit, never a traceback or a
boxed usage panel. Commands raise ``CliError`` for problems the user can fix;
anything else is reported on one line too (``FTLCT_DEBUG=1`` shows the traceback).
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from typing import Any

import typer

try:  # recent typer vendors click; older releases use the click package
    from typer._click import exceptions as click_errors
except ImportError:  # pragma: no cover - depends on the installed typer
    from click import exceptions as click_errors

EXIT_FAILURE = 1
EXIT_USAGE = 2


class CliError(Exception):
    """A problem the user can act on; its message is printed as the one line."""

    def __init__(self, message: str, exit_code: int = EXIT_FAILURE):
        super().__init__(message)
        self.exit_code = exit_code


def new_app(help_text: str) -> typer.Typer:
    return typer.Typer(
        help=help_text,
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
        rich_markup_mode=None,
    )


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def run(app: typer.Typer, prog: str, argv: list[str] | None = None) -> int:
    """Run a typer app with the one-line error contract; returns the exit code."""
    try:
        result = app(args=argv, prog_name=prog, standalone_mode=False)
    except click_errors.NoArgsIsHelpError as exc:
        # click >= 8.2 raises this after printing nothing in non-standalone mode
        print(exc.ctx.get_help() if exc.ctx else str(exc), file=sys.stderr)
        return EXIT_USAGE
    except click_errors.UsageError as exc:
        hint = f" (see {exc.ctx.command_path} --help)" if exc.ctx else ""
        print(f"{prog}: error: {_one_line(exc.format_message())}{hint}", file=sys.stderr)
        return EXIT_USAGE
    except typer.Exit as exc:
        return exc.exit_code
    except typer.Abort:
        print(f"{prog}: aborted", file=sys.stderr)
        return EXIT_FAILURE
    except CliError as exc:
        print(f"{prog}: error: {_one_line(str(exc))}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if os.environ.get("FTLCT_DEBUG"):
            traceback.print_exc()
        print(f"{prog}: error: {type(exc).__name__}: {_one_line(str(exc))}", file=sys.stderr)
        return EXIT_FAILURE
    return result if isinstance(result, int) else 0


def main_for(app: typer.Typer, prog: str) -> None:
    sys.exit(run(app, prog))


def echo_json(data: Any) -> None:
    """JSON to stdout, one document, stable key order."""
    print(json.dumps(data, indent=2, sort_keys=True, default=str))
