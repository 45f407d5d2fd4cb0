"""`python -m tune_archiver`."""

from tune_archiver.cli.main import main

raise SystemExit(main())
