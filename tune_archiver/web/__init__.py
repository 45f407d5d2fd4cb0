"""`serve`: a read-only web view of the archive (aiohttp): access.py (who may ask),
server.py (the routes), blobs.py (streaming a blob, with Range)."""
