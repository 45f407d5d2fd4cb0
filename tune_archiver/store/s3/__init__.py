"""The archive in S3-compatible object storage (the optional `[s3]` extra)."""
