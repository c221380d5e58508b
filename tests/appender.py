"""A process that appends to a store in a loop, for the crash and concurrency tests.

After each commit it writes one line per stored row, `seq tenant tenant_seq record_hash`, to
its acknowledgement file and flushes it: each line is a promise that the row is stored. Run as
`python appender.py DB ACKS SEED BATCHES THREADS [KEY]`; BATCHES 0 means "until killed".
"""

from __future__ import annotations

import random
import sys
import threading
from pathlib import Path

from sealtrail.api.event import Event
from sealtrail.chain.keys import load_signer
from sealtrail.chain.store import ChainStore, CheckpointPolicy
from sealtrail.demo import sample_events


def main() -> None:
    db, acks, seed, batches, threads = sys.argv[1:6]
    key = sys.argv[6] if len(sys.argv) > 6 else None
    policy = CheckpointPolicy(load_signer(Path(key)), 40, None) if key else None
    lock = threading.Lock()
    out = Path(acks).open("a", encoding="ascii")  # noqa: SIM115 - lives as long as the process

    def work(worker: int) -> None:
        pick = random.Random(int(seed) * 100 + worker)
        events = [Event.model_validate(raw) for raw in
                  sample_events(500, seed=int(seed) * 100 + worker, tenants=("acme", "globex"))]
        # Each thread opens its own store: separate connections contend on SQLite's lock.
        with ChainStore(db, checkpoints=policy) as store:
            done = 0
            while int(batches) == 0 or done < int(batches):
                size = pick.randint(1, 25)
                start = pick.randrange(0, len(events) - size)
                stored = store.append(events[start : start + size])
                lines = "".join(
                    f"{s.seq} {s.tenant_id} {s.tenant_seq} {s.record_hash}\n" for s in stored
                )
                with lock:
                    out.write(lines)
                    out.flush()
                done += 1

    workers = [threading.Thread(target=work, args=(n,)) for n in range(int(threads))]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()


if __name__ == "__main__":
    main()
