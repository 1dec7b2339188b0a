"""One module per `trajtok` subcommand; each defines `register(subparsers)`. `_*` modules are helpers."""
