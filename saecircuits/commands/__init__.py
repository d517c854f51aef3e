"""CLI subcommands, one module each (see saecircuits.cli)."""
