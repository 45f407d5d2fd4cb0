"""What each command does, apart from printing: fetch, dry run, verify, list, export, gc."""
