"""Command line: python -m engine <command> ... (reference: docs/cli.md)."""

from __future__ import annotations

import argparse
import importlib
import sys

from engine.api import EngineError, os_error_message

# Each command lives in engine/cli/<module>.py with add_parser(subparsers) and run(args) -> int.
COMMANDS = {
    "generate": "engine.cli.generate",
    "info": "engine.cli.info",
    "distill": "engine.cli.distill",
    "export-onnx": "engine.cli.export_onnx",
    "bench": "engine.cli.bench",
    "eval": "engine.cli.eval",
    "data": "engine.cli.data",
    "train-teacher": "engine.cli.train_teacher",
    "train-autoencoder": "engine.cli.train_autoencoder",
    "train-evaluator": "engine.cli.train_evaluator",
    "train-recognizer": "engine.cli.train_recognizer",
    "smoothing": "engine.cli.smoothing",
    "transfer": "engine.cli.transfer",
}


class OneLineParser(argparse.ArgumentParser):
    """Bad arguments print one `error:` line (naming --help) and exit 2, as other input errors
    do; subcommand parsers are of this class too."""

    def error(self, message: str) -> None:
        self.exit(2, f"error: {message}; see {self.prog} --help.\n")


def version_line() -> str:
    from engine import __version__

    return f"dmd-studio {__version__}"


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="python -m engine",
        description="DMD Studio engine: one-step generation, distillation, export, benchmarks.",
    )
    parser.add_argument("--version", action="version", version=version_line())
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module_name in COMMANDS.values():
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as error:
            if error.name == module_name:
                continue  # command not built yet
            raise
        module.add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except EngineError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except OSError as error:  # a file the command reads or writes: the path and the cause
        print(f"error: {os_error_message(error)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
