"""The `moderation` commands, one module per command group (after threatexchange's CLI).

Each module has a `register(...)` that adds its parsers, with `handler` set to a function
`(args, settings) -> ExitCode`; `consumers.cli` builds the parser from them in `build_parser` and is the
one error boundary. Handlers import the heavy parts (torch, the model, the database) on use, so a
command starts without what it does not need.
"""
