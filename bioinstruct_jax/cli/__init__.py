"""Command-line plumbing shared by every entry point: one-line errors (errors.py) and argument types (arguments.py)."""
