"""Counting the TCP connections to a local port (Linux ``/proc/net/tcp*``)."""

from __future__ import annotations

_ESTABLISHED = "01"


def established(port: int, tables: tuple[str, ...] = ("/proc/net/tcp", "/proc/net/tcp6")) -> int | None:
    """Established connections whose local end is ``port``; None where /proc has no tables."""
    wanted = f":{port:04X}"
    count = 0
    found = False
    for table in tables:
        try:
            with open(table, encoding="ascii") as f:
                next(f, None)  # the header line
                for line in f:
                    fields = line.split(None, 4)
                    if fields[3] == _ESTABLISHED and fields[1].endswith(wanted):
                        count += 1
            found = True
        except OSError:
            continue
    return count if found else None
