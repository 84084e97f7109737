"""Subcommands kept out of cli.py, each module registering its own; thin shells over services."""
