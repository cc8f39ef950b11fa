"""One module per `python -m engine` command: add_parser(subparsers) registers it and sets
args.run to a function (args) -> exit code. Raise engine.api.EngineError for bad input."""
