#!/usr/bin/env python3
"""Runs sippy/rtpproxy as the reference relay for the interop test (SLUICE_INTEROP_RELAY=rtpproxy).

Debian 12 has no rtpproxy package; the `rtp-io` wheel on PyPI embeds a current rtpproxy
(sippy/rtp.io). Install it into a venv and point the test at that venv's python:

    python3 -m venv /tmp/rtpio && /tmp/rtpio/bin/pip install rtp-io
    SLUICE_INTEROP_RELAY=rtpproxy SLUICE_INTEROP_PYTHON=/tmp/rtpio/bin/python \
        cargo test -p sluice --test interop_kamailio

Usage: rtpproxy_host.py MAX_SECONDS [rtpproxy arguments...]
The arguments are rtpproxy's own (-s, -l, -m, -M, -d, ...). rtpproxy logs to stderr. The host
exits on SIGTERM/SIGINT, after MAX_SECONDS, or when stdin is a pipe and its writer goes away
(so a test that dies cannot leave it behind), whichever comes first.
"""

import os
import signal
import stat
import sys
import threading
import time


def main() -> int:
    if len(sys.argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    max_seconds = float(sys.argv[1])
    try:
        from rtp.io import rtpproxy  # noqa: PLC0415 (optional dependency, explained above)
    except ImportError as e:
        print(f"rtpproxy_host: cannot import rtp.io ({e}); `pip install rtp-io`", file=sys.stderr)
        return 3
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())

    def watch_stdin() -> None:
        try:
            while os.read(0, 4096):
                pass
        except OSError:
            pass
        stop.set()

    if stat.S_ISFIFO(os.fstat(0).st_mode):
        threading.Thread(target=watch_stdin, daemon=True).start()
    # rtp.io adds its own -s/-n socketpairs; ours come after and are additive.
    relay = rtpproxy(extra_args=sys.argv[2:])
    print(f"rtpproxy_host: rtpproxy running, pid {os.getpid()}", file=sys.stderr, flush=True)
    deadline = time.monotonic() + max_seconds
    while not stop.is_set() and time.monotonic() < deadline:
        stop.wait(0.2)
    del relay
    print("rtpproxy_host: stopped", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
