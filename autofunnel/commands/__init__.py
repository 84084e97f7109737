"""Subcommands kept out of cli.py, each module registered there in one line."""
