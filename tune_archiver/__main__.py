"""`python -m tune_archiver`."""

from tune_archiver.cli import main

raise SystemExit(main())
