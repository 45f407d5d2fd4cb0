"""-v tracebacks are redacted, scrubbed of the key and escaped like every other line."""

from __future__ import annotations

import asyncio
import errno
import gc
import logging
import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

import pytest

from tune_archiver.cli.main import main
from tune_archiver.cli.terminal import SafeFormatter
from tune_archiver.errors import BodyError
from tune_archiver.threads import in_thread

SIGNED = "/presigned?X-Amz-Credential=AKIAcred&X-Amz-Signature=SECRETSIG"
KEY = "sd_traceback_key_0123456789"


class Malformed:
    """A host on 127.0.0.1 that redirects any request to a presigned URL on itself, and
    answers that URL with a header aiohttp cannot parse: aiohttp's error names the URL
    whole, signature included."""

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self.paths: list[str] = []
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        while True:
            try:
                connection, _ = self._listener.accept()
            except OSError:  # closed: the test is over
                return
            with connection:
                request = connection.recv(65536).decode("latin-1")
                path = request.split(" ", 2)[1] if request.count(" ") >= 2 else ""
                self.paths.append(path)
                if path.startswith("/presigned"):
                    connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n"
                                       b"Bad\x01Header: x\r\n\r\nhi")
                else:
                    connection.sendall(f"HTTP/1.1 302 Found\r\nLocation: {SIGNED}\r\n"
                                       "Content-Length: 0\r\nConnection: close\r\n\r\n".encode())

    def __enter__(self) -> Malformed:
        self._thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._listener.shutdown(socket.SHUT_RDWR)  # wakes the accept() that waits
        self._listener.close()
        self._thread.join(10)


@pytest.fixture
def malformed() -> Iterator[Malformed]:
    with Malformed() as host:
        yield host


def test_a_verbose_traceback_never_shows_a_signature(
    malformed: Malformed, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """fetch --all -v whose listing is sent to a presigned URL that answers garbage prints
    the chained traceback, with the URL's signature and credential redacted."""
    os.environ["ASTRIA_API_KEY"] = KEY
    code = main(["fetch", "--all", "-v", "--retries", "0", "--archive", str(tmp_path / "a"),
                 "--api-url", malformed.url])
    assert code == 1
    assert malformed.paths[-1] == SIGNED  # the presigned URL was asked for, and failed
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err
    assert "ClientResponseError" in err  # the chained aiohttp error is shown ...
    assert "X-Amz-Signature=REDACTED" in err  # ... with its URL redacted
    assert "SECRETSIG" not in err
    assert "AKIAcred" not in err
    assert "\x01" not in err
    assert err.splitlines()[-1].startswith("tune-archiver: error: malformed response")


def chained_error() -> BodyError:
    """A BodyError raised from an error whose message names a presigned URL and the key."""
    try:
        try:
            raise ValueError(f"bad answer from https://h.example{SIGNED} for {KEY}\r\x1b[2J")
        except ValueError as cause:
            raise BodyError("the response body broke off") from cause
    except BodyError as error:
        return error


def test_a_logged_traceback_is_redacted_scrubbed_and_escaped() -> None:
    """A log line with exc_info (a bug met with -v) gives its traceback line by line,
    each redacted, scrubbed of the key and escaped."""
    error = chained_error()
    record = logging.LogRecord("tune_archiver", logging.DEBUG, __file__, 1, "unexpected error",
                               (), (BodyError, error, error.__traceback__))
    text = SafeFormatter("tune-archiver: %(message)s", [KEY]).format(record)
    lines = text.split("\n")
    assert lines[0] == "tune-archiver: unexpected error"
    assert lines[1] == "Traceback (most recent call last):"
    assert ("ValueError: bad answer from https://h.example/presigned?X-Amz-Credential=REDACTED&"
            "X-Amz-Signature=REDACTED for REDACTED\\x0d\\x1b[2J") in lines
    assert lines[-1] == "tune_archiver.errors.BodyError: the response body broke off"
    assert "SECRETSIG" not in text
    assert KEY not in text


async def test_a_call_stopped_while_its_thread_fails_prints_no_traceback() -> None:
    """A worker's file call cancelled while its thread runs (fetch 1 2 on a disk that
    refuses chmod: the first tune's error stops the second's) and then failing there is
    seen through and its error dropped: it printed 'Task exception was never retrieved'
    and a traceback under the run's one error line."""
    seen: list[str] = []
    asyncio.get_running_loop().set_exception_handler(
        lambda loop, context: seen.append(context["message"]))
    started, go = threading.Event(), threading.Event()

    def fails() -> None:
        started.set()
        assert go.wait(10)
        raise OSError(errno.ENOSYS, os.strerror(errno.ENOSYS))

    task = asyncio.create_task(in_thread(fails))
    assert await asyncio.to_thread(started.wait, 10)
    task.cancel()
    go.set()
    with pytest.raises(asyncio.CancelledError):
        await task
    del task
    await asyncio.sleep(0)  # one turn of the loop lets go of the thread's task
    gc.collect()
    assert seen == []
