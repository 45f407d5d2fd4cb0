"""The fetch engine: one URL to one verified blob."""
