"""`python -m tune_archiver`."""

from tune_archiver.cli.start import entry

raise SystemExit(entry())
