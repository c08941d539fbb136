"""`medsettle` commands that live outside gateway/cli.py (which keeps the parser and the older ones):
each module has `register(sub)`, called when the parser is built, and the command's function."""
