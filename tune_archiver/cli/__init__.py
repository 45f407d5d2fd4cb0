"""The command line: main(argv), its grammar, and what it prints."""
