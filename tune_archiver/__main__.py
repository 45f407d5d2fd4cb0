"""`python -m tune_archiver`."""

from tune_archiver.cli.main import entry

raise SystemExit(entry())
