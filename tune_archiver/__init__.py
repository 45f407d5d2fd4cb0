"""tune-archiver: a complete, verifiable copy of an Astria fine-tune before it expires."""

__version__ = "0.1.0"
