"""One module per `fin3r` subcommand (see fin3r.cli)."""
