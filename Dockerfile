# tune-archiver in a container: python:3.11-slim, the [s3] extra, a non-root user.
#   docker build -t tune-archiver .
#   install -d -m 700 -o 10001 -g 10001 /backups/astria   # the archive is the user's own
#   docker run --rm -e ASTRIA_API_KEY -v /backups/astria:/archive tune-archiver fetch --all
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TUNE_ARCHIVE=/archive

WORKDIR /src
COPY pyproject.toml README.md ./
COPY tune_archiver ./tune_archiver
# The package itself from this folder: there is no version to pin (DL3013).
# hadolint ignore=DL3013
RUN pip install ".[s3]" \
    && useradd --system --uid 10001 --create-home --home-dir /home/archiver archiver \
    && install -d -m 700 -o archiver -g archiver /archive \
    && rm -rf /src

USER 10001:10001
WORKDIR /home/archiver
VOLUME ["/archive"]
ENTRYPOINT ["tune-archiver"]
CMD ["--help"]
