"""A loopback syslog receiver for benchmarks: RFC 6587 octet-counted RFC 5424 over TCP.

    .venv/bin/python bench/syslog_sink.py PORT COUNTFILE

Run as its own process (asyncio). It reads `MSG-LEN SP SYSLOG-MSG` frames as RFC 6587 section
3.4.1 defines them (the framing sealtrail sends on TCP and TLS) and checks each message as far
as a receiver must to file it: a `<PRI>` of at most three digits (0-191) followed by version
`1 `, and a MSG that is the UTF-8 BOM and a JSON object (`{` ... `}`). A frame that breaks any
of that is counted as refused and the connection is closed, as rsyslog does with a framing
error. There is no answer: syslog has none.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

from export_sink_counts import Counts

BOM = b"\xef\xbb\xbf"
MAX_FRAME = 1 << 20


def check(message: bytes) -> bool:
    """`<PRI>1 ` ... BOM `{...}`: the parts of RFC 5424 a receiver relies on."""
    close = message.find(b">", 1, 5)
    if not message.startswith(b"<") or close < 2 or not message[1:close].isdigit():
        return False
    if int(message[1:close]) > 191 or message[close + 1 : close + 3] != b"1 ":
        return False
    start = message.find(BOM, close)
    return start > 0 and message[start + 3 : start + 4] == b"{" and message.endswith(b"}")


def parse(buffer: bytearray) -> tuple[int, int, bool]:
    """(messages, bytes consumed, framing ok) for the complete frames at the start of `buffer`."""
    position, messages, size = 0, 0, len(buffer)
    view = bytes(buffer)
    while position < size:
        space = view.find(b" ", position, position + 8)
        if space < 0:
            return messages, position, size - position < 8
        length_text = view[position:space]
        if not length_text.isdigit() or length_text.startswith(b"0"):
            return messages, position, False
        end = space + 1 + int(length_text)
        if end - space > MAX_FRAME:
            return messages, position, False
        if end > size:
            break
        if not check(view[space + 1 : end]):
            return messages, position, False
        messages += 1
        position = end
    return messages, position, True


def main() -> None:
    port, count_file = int(sys.argv[1]), Path(sys.argv[2])
    counts = Counts(count_file)

    async def connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        buffer = bytearray()
        try:
            while chunk := await reader.read(1 << 20):
                buffer += chunk
                messages, used, ok = parse(buffer)
                del buffer[:used]
                if messages:
                    counts.note(messages, used)
                if not ok:
                    counts.refused()
                    break
            if buffer:
                counts.refused()  # the peer closed in the middle of a frame
        finally:
            counts.flush()
            writer.close()

    async def serve() -> None:
        server = await asyncio.start_server(connection, "127.0.0.1", port)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        async with server:
            await stop.wait()
        counts.flush()

    asyncio.run(serve())


if __name__ == "__main__":
    main()
