"""Seeded fuzzers of a hostile Astria API and hostile asset hosts, run against the real
CLI (in process) and the stand-in of tests/standin.py, all on 127.0.0.1.

    python -m fuzz.api SEED ROUNDS       tune JSON of GET /tunes/:id mutated (fetch, --all,
                                         --prompts, verify, list)
    python -m fuzz.listing SEED ROUNDS   GET /tunes pages: wrong types, repeats, endless
    python -m fuzz.prompts SEED ROUNDS   a LoRA/FaceID tune's prompts and the account's
    python -m fuzz.twice SEED ROUNDS     archive whole, then a hostile answer: nothing
                                         archived may be dropped
    python -m fuzz.hosts [CASE...] [--dry-run]   scripted raw asset hosts (encodings,
                                         206s, Content-Range, lengths, redirects)
    python -m fuzz.split [CASE...]       the same for parallel ranges

Each flags a traceback without -v, an exit code README does not define, an error line
said twice, an Authorization header at an asset host, a manifest the schema refuses,
the key or a raw control character printed, and an "ok" blob that is not the file.
"""
