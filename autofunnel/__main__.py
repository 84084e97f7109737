"""`python -m autofunnel`: the same command line as `autofunnel`."""

from autofunnel.cli import main

main(prog_name="autofunnel")
