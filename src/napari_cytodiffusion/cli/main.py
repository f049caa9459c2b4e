"""Entry point: parse arguments, dispatch to a sub-command, turn user errors into exit code 2."""

from __future__ import annotations

import argparse
import os
import sys

from .. import __version__
from ..errors import CytoDiffusionError

COMMANDS = (
    "demo",
    "segment",
    "classify",
    "evaluate",
    "evaluate-segmentation",
    "generate",
    "evaluate-generation",
    "train",
    "analyze",
    "finetune",
    "agreement",
    "models",
    "report",
    "counterfactual",
)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    from . import commands_adapt, commands_counterfactual, commands_model, commands_report, commands_smear

    p = _Parser(
        prog="napari-cytodiffusion",
        description="Segment blood smears and classify every cell with a diffusion model.",
    )
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    p.add_argument("--debug", action="store_true", help="show tracebacks of unexpected errors")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser, metavar="COMMAND")
    commands_smear.register(sub)
    commands_model.register(sub)
    commands_adapt.register(sub)
    commands_report.register(sub)
    commands_counterfactual.register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    parser = build_parser()
    args = parser.parse_args(argv)
    out = getattr(args, "out", None)
    out_was_there = out is None or os.path.lexists(out)
    try:
        return int(args.func(args) or 0)
    except CytoDiffusionError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if args.debug:
            raise
        print(
            f"internal error: {type(exc).__name__}: {exc} (rerun with --debug for details)", file=sys.stderr
        )
        return 1
    finally:
        if not out_was_there:
            _remove_if_empty(out)


def _remove_if_empty(folder) -> None:
    """Take back an ``--out`` folder this run made but wrote nothing into (a run that failed)."""
    try:
        os.rmdir(folder)  # only succeeds on an empty folder
    except OSError:
        pass  # not empty (the run wrote something), or not there: leave it


if __name__ == "__main__":
    sys.exit(main())
