"""HTTP plumbing: sessions, redirects, aiohttp's errors as ours, and bounded retries.

aiohttp types stay inside net/, download/ and store/s3/; tenacity inside net/retry.py.
"""
