"""The ``attnvis`` console script: the only place argparse lives.

One module per command (``visualize``, ``export``, ``demo``, ``batch``, ``evaluate``,
``render``, ``bench``), each with ``add_parser(subparsers)`` and ``run(args)``; the
argument groups they share are in :mod:`attnvis.cli._args`. Commands parse,
call the library and print; the work is in the library.
"""

from __future__ import annotations

import argparse
import errno
import os
import sys

from attnvis.errors import AttnvisError

_COMMANDS = ("visualize", "export", "demo", "batch", "render", "bench", "evaluate")


def build_parser() -> argparse.ArgumentParser:
    """The parser of every command (each command module adds its own)."""
    import importlib

    from attnvis import __version__

    parser = argparse.ArgumentParser(prog="attnvis", description="Show where a transformer looks.")
    parser.add_argument("--version", action="version", version=f"attnvis {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for command in _COMMANDS:
        importlib.import_module(f"attnvis.cli.{command}").add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point; bad input → one line on stderr and a non-zero exit, never a traceback."""
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # e.g. for batch's --resume hint
    try:
        return args.func(args)
    except AttnvisError as err:
        print(f"attnvis: error: {err}", file=sys.stderr)
        return err.exit_code
    except ModuleNotFoundError as err:  # an optional extra that a code path needs and no check named first
        missing = _missing_extra(err)
        if missing is None:
            raise
        print(f"attnvis: error: {missing}", file=sys.stderr)
        return missing.exit_code
    except BrokenPipeError:  # whoever read the output went away (`| head`): stop quietly, as Unix tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error when Python flushes at exit
        return 141  # 128 + SIGPIPE, the status a shell reports for a tool killed by the closed pipe
    except OSError as err:  # disk full, permissions on the output folder
        print(f"attnvis: error: {_os_error(err)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("attnvis: interrupted", file=sys.stderr)
        return 130


def _os_error(err: OSError) -> str:
    """One line naming the file and what to do; a full disk is said in words."""
    where = f"{err.filename}: " if err.filename else ""
    if err.errno == errno.ENOSPC:
        return (f"{where}no space left on device: the disk is full; free some space and run the command again "
                "(attnvis batch: add --resume to keep the images already done)")
    return f"{where}{err.strerror or err}"


def _missing_extra(err: ModuleNotFoundError):
    """The one-line error for an optional package that is not installed, or None for any other module."""
    from attnvis._optional import EXTRAS, require

    top = (err.name or "").split(".")[0]
    if top not in EXTRAS:
        return None
    try:
        require(top, "this command")
    except AttnvisError as missing:
        return missing
    return None


if __name__ == "__main__":
    sys.exit(main())
