"""Run one command and write its wall time and rusage as JSON: measure.py RESULT CMD [ARG...].

bench.py starts this small launcher (python -S -I) instead of timing the tool itself:
on Linux a child's ru_maxrss is at least the RSS of the process that forked it (with
vfork, as subprocess uses, the parent's *peak*), so the benchmark's own ~70 MiB would
hide every tool's peak. Forked from here the floor is about 6.5 MiB.
"""

import json
import os
import sys
import time

result, argv = sys.argv[1], sys.argv[2:]
start = time.monotonic()
pid = os.fork()
if pid == 0:
    try:
        os.execvp(argv[0], argv)
    finally:
        os._exit(127)
_, status, usage = os.wait4(pid, 0)
wall = time.monotonic() - start
code = os.waitstatus_to_exitcode(status)
with open(result, "w") as file:
    json.dump({"wall": wall, "code": code, "cpu": usage.ru_utime + usage.ru_stime,
               "maxrss_kib": usage.ru_maxrss}, file)
sys.exit(0 if code == 0 else 1)
