"""The fetch engine: one URL to one verified blob.

    engine.py    Downloader: one download across its attempts, and its states below
    ranges.py    RangedFetch: a large file over several connections at once
    partial.py   Partial: the bytes on disk so far, their sha256, the resume record
    staging.py   Staging: where partials live; Incoming: a partial and the store's intake

The states of one download (Downloader._download and _body):

    opened      Staging.open finds the URL's partial (tmp/<hash>.part and its sidecar):
                empty, or resumable from an earlier run (same URL key and validator)
    one stream  GET, with `Range: bytes=<on disk>-` and `If-Range` when resuming; the
                body is appended and hashed as it comes (net.transport.pump)
    resumed     a 206 that starts exactly at the bytes on disk, with the same total
    restarted   a 200 to a resume, a 416, or a 206 we did not ask for: the partial is
                reset and the file starts over from its first byte
    split       the first answer shows a file of at least --split-threshold from a
                server that takes ranges (SplitHere): the partial is cut into spans
                and RangedFetch fills them, each retried and resumed on its own; a
                span answered with the whole file or 416 (RangesRefused) resets the partial
                and the file goes back to one stream, never split again
    renewed     the host refuses the URL as expired (403, or 400/410 saying so): the
                tune is fetched once more for a fresh URL of the same asset, and the
                download goes on from the bytes on disk; again each time a fresh URL
                expires after it took the download MOVED_ON further
    committed   every byte is in and hashed: Incoming.commit fsyncs the file and the
                store's Intake makes it the blob (a rename, or a checked upload)
    released    it failed for good or was cancelled: the partial is kept for the next
                run (removed if its bytes filled the disk, or if they are not what was
                received) and the intake abandoned; a partial kept whole (its commit
                failed) is committed by the next run without asking the host again

Every blocking file call goes through threads.in_thread, which sees it through even
when the download is cancelled, so no write races the partial's close.
"""
