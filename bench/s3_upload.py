"""The W6 peer: boto3's upload_file of one local file: s3_upload.py ENDPOINT BUCKET KEY FILE.

Default TransferConfig (8 MiB parts, 10 threads), credentials from the environment.
bench.py runs it under measure.py like every other tool.
"""

from __future__ import annotations

import sys

import boto3


def main() -> None:
    endpoint, bucket, key, path = sys.argv[1:5]
    boto3.client("s3", endpoint_url=endpoint).upload_file(path, bucket, key)


if __name__ == "__main__":
    main()
