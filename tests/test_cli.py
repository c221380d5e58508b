"""The command line as a user runs it: append, dump, keygen, checkpoint, verify's output, demo.

Covers: NDJSON in, a JSON summary out; invalid lines reported by line number and field, their
batch rejected whole while other batches are stored; oversize events; dump output is byte for
byte what is stored, filtered by tenant and seq; keygen refuses to overwrite; checkpoint writes
a file verify accepts; verify draws a progress bar on a terminal and never into a pipe; the demo
runs end to end.
"""

from __future__ import annotations

import os
import pty
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest

from sealtrail.api.event import Event
from sealtrail.chain.store import ChainStore
from sealtrail.demo import sample_events

from .conftest import ROOT, CliResult, ndjson

Cli = Callable[..., CliResult]


def good(count: int, seed: int = 1) -> list[dict[str, object]]:
    return list(sample_events(count, seed=seed))


def test_append_prints_a_summary(cli: Cli, db_path: Path) -> None:
    result = cli("append", "--db", db_path, "--batch", "10", stdin=ndjson(good(25)))
    assert result.returncode == 0, result.stderr
    summary = orjson.loads(result.stdout)
    assert summary["stored"] == 25
    assert (summary["first_seq"], summary["last_seq"]) == (1, 25)
    assert summary["rejected_batches"] == []
    assert sum(t["stored"] for t in summary["tenants"].values()) == 25


def test_bad_lines_reject_their_batch_only(cli: Cli, db_path: Path) -> None:
    lines = ndjson(good(10)).splitlines()
    lines[3] = b'{"event_type": "safety.decision", "severity": "urgent"}'
    lines.insert(8, b"")  # blank lines are skipped, but keep their number
    stdin = b"\n".join(lines) + b"\n"
    result = cli("append", "--db", db_path, "--batch", "5", stdin=stdin)
    assert result.returncode == 1
    summary = orjson.loads(result.stdout)
    assert summary["stored"] == 5  # the second batch: lines 6-8, 10 and 11
    (rejected,) = summary["rejected_batches"]
    assert rejected["lines"] == [1, 5]
    assert rejected["errors"] == [
        {"line": 4, "field": "severity",
         "message": "Input should be 'CRITICAL', 'HIGH', 'MEDIUM', 'LOW' or 'INFO'"},
    ]
    assert b"line 4: severity: Input should be" in result.stderr
    assert b"lines 1-5: batch rejected, nothing of it stored" in result.stderr
    assert b"Traceback" not in result.stderr
    with ChainStore(db_path) as store:
        assert store.last_seq() == 5


def test_malformed_json_line_is_named(cli: Cli, db_path: Path) -> None:
    stdin = ndjson(good(2)) + b'{"event_type": "a.b", "severity": "HIGH", \n'
    result = cli("append", "--db", db_path, stdin=stdin)
    assert result.returncode == 1
    assert b"line 3: Invalid JSON" in result.stderr
    with ChainStore(db_path) as store:
        assert store.last_seq() == 0  # one batch of three lines: all or nothing


def test_oversize_event_is_rejected_with_its_line(cli: Cli, db_path: Path) -> None:
    big = {"event_type": "a.b", "severity": "INFO",
           "extra": {f"k{i}": "v" * 8000 for i in range(40)}}
    result = cli("append", "--db", db_path, stdin=ndjson([*good(2), big]))
    assert result.returncode == 1
    assert b"line 3: event is" in result.stderr
    assert b"the limit is 262144" in result.stderr


def test_dump_is_exactly_what_is_stored(cli: Cli, db_path: Path) -> None:
    cli("append", "--db", db_path, stdin=ndjson(good(40)))
    with ChainStore(db_path) as store:
        stored = list(store.rows())
    assert cli("dump", "--db", db_path).stdout == b"".join(b + b"\n" for b in stored)
    acme = cli("dump", "--db", db_path, "--tenant", "acme", "--since-seq", "10").stdout
    rows = [orjson.loads(line) for line in acme.splitlines()]
    assert rows
    assert all(row["tenant_id"] == "acme" and row["seq"] > 10 for row in rows)


def test_dump_of_a_missing_store_exits_3(cli: Cli, tmp_path: Path) -> None:
    result = cli("dump", "--db", tmp_path / "none.db")
    assert result.returncode == 3
    assert b"no such store" in result.stderr
    assert not (tmp_path / "none.db").exists()


def test_keygen_writes_a_private_key_only_its_owner_reads(cli: Cli, tmp_path: Path) -> None:
    result = cli("keygen", "--out", tmp_path / "k")
    assert result.returncode == 0
    assert len(orjson.loads(result.stdout)["key_id"]) == 16
    assert stat.S_IMODE((tmp_path / "k").stat().st_mode) == 0o600
    assert (tmp_path / "k.pub").read_bytes().startswith(b"-----BEGIN PUBLIC KEY-----")
    before = (tmp_path / "k").read_bytes()
    again = cli("keygen", "--out", tmp_path / "k")
    assert again.returncode == 3
    assert b"refusing to overwrite" in again.stderr
    assert (tmp_path / "k").read_bytes() == before


def test_checkpoint_then_verify(cli: Cli, db_path: Path, tmp_path: Path) -> None:
    cli("keygen", "--out", tmp_path / "k")
    cli("append", "--db", db_path, stdin=ndjson(good(30)))
    result = cli("checkpoint", "--db", db_path, "--key", tmp_path / "k", "--out", tmp_path / "c.json")
    assert result.returncode == 0, result.stderr
    assert orjson.loads(result.stdout)["signed"] == 3
    verified = cli("verify", "--db", db_path, "--checkpoints", tmp_path / "c.json",
                   "--pubkey", tmp_path / "k.pub")
    assert verified.returncode == 0, verified.stdout
    assert b"intact: 33 rows in 3 tenant chains" in verified.stdout


def test_append_signs_checkpoints_when_given_a_key(cli: Cli, db_path: Path, tmp_path: Path) -> None:
    cli("keygen", "--out", tmp_path / "k")
    result = cli("append", "--db", db_path, "--batch", "50", "--checkpoint-key", tmp_path / "k",
                 "--checkpoint-every", "20", stdin=ndjson(good(200)))
    assert result.returncode == 0, result.stderr
    with ChainStore(db_path) as store:
        assert len(store.latest_checkpoints()) == 3
    verified = cli("verify", "--db", db_path, "--pubkey", tmp_path / "k.pub", "--json")
    report = orjson.loads(verified.stdout)
    assert report["status"] == "intact"
    assert all(t["checkpoints_checked"] >= 2 for t in report["tenants"])


def test_demo_runs_end_to_end(cli: Cli, tmp_path: Path) -> None:
    result = cli("demo", "--dir", tmp_path / "demo")
    assert result.returncode == 0, result.stdout + result.stderr
    assert orjson.loads(result.stdout.splitlines()[-1]) == {"demo": "ok", "rows": 606}
    assert b"verdict: tampered (exit code 1)" in result.stdout
    assert b"verdict: truncated (exit code 2)" in result.stdout
    assert b"606 rows delivered" in result.stdout
    assert b"606 rows in 3 tenant chains" in result.stdout
    assert b"signed checkpoints, all valid" in result.stdout


def test_verify_shows_progress_on_a_terminal_only(tmp_path: Path) -> None:
    db = tmp_path / "big.db"
    event = Event.model_validate({"event_type": "a.b", "severity": "INFO"})
    with ChainStore(db, synchronous="NORMAL") as store:
        for _ in range(120):
            store.append([event] * 500)
    env = {**os.environ, "PYTHONPATH": str(ROOT / "operator")}
    command = [sys.executable, "-m", "sealtrail", "verify", "--db", str(db), "--processes", "1"]
    leader, follower = pty.openpty()
    try:
        result = subprocess.run(command, stderr=follower, stdout=subprocess.PIPE, env=env,
                                timeout=120, check=False)
        os.close(follower)
        shown = b""
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:
                break
            if not chunk:
                break
            shown += chunk
    finally:
        os.close(leader)
    assert result.returncode == 0
    assert b"verifying [" in shown
    assert b"60,000/60,000 rows" in shown
    piped = subprocess.run(command, capture_output=True, env=env, timeout=120, check=False)
    assert piped.returncode == 0
    assert b"verifying" not in piped.stderr


def test_crds_check_passes_on_the_committed_files() -> None:
    # As the README says to run it: from the repository, after changing a model.
    done = subprocess.run([sys.executable, "-m", "sealtrail", "crds", "check"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120, check=False,
                          env={**os.environ, "PYTHONPATH": str(ROOT / "operator")})
    assert done.returncode == 0, done.stdout + done.stderr


def test_verify_rows_rechecks_a_siems_copy(cli: Cli, tmp_path: Path, db_path: Path) -> None:
    assert cli("keygen", "--out", tmp_path / "k.key").returncode == 0
    appended = cli("append", "--db", db_path, "--checkpoint-key", tmp_path / "k.key",
                   "--checkpoint-every", "10", stdin=ndjson(good(40)))
    assert appended.returncode == 0, appended.stderr
    dumped = cli("dump", "--db", db_path)
    assert dumped.returncode == 0, dumped.stderr
    rows = dumped.stdout.splitlines()  # rows exactly as a SIEM receives them
    export = tmp_path / "siem-export.ndjson"
    export.write_bytes(b"\n".join(reversed(rows)) + b"\n")  # a SIEM's order is its own
    ok = cli("verify", "--rows", export, "--pubkey", tmp_path / "k.key.pub")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert b"intact" in ok.stdout
    assert b"signed checkpoints checked" in ok.stdout
    assert b" 0 signed" not in ok.stdout

    edited = [orjson.loads(row) for row in rows]
    edited[7]["reason"] = "nothing to see here"
    export.write_bytes(b"\n".join(orjson.dumps(row) for row in edited) + b"\n")
    tampered = cli("verify", "--rows", export, "--pubkey", tmp_path / "k.key.pub")
    assert tampered.returncode == 1
    assert (f"{edited[7]['tenant_id']} (store {edited[7]['store_id']}): row "
            f"{edited[7]['tenant_seq']} does not match its hash").encode() in tampered.stdout

    export.write_bytes(b"\n".join(rows[:5] + rows[6:]) + b"\n")  # one row never arrived
    gap = cli("verify", "--rows", export, "--pubkey", tmp_path / "k.key.pub")
    assert gap.returncode == 1
    assert b"never arrived" in gap.stdout


def test_every_sealtrail_command_in_the_readme_is_one_the_cli_takes() -> None:
    # The README's command lines are run elsewhere (the demo, the suite, the e2e tests); here
    # each is parsed by the real argument parser, so no documented command or flag can drift.
    import shlex  # noqa: PLC0415

    from sealtrail.cli import _parser  # noqa: PLC0415

    lines, fenced = [], False
    for line in (ROOT / "README.md").read_text().splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif fenced and line.startswith("sealtrail "):
            lines.append(line)
    assert len(lines) >= 10
    for line in lines:
        command = line.split("  #", 1)[0].split(" < ", 1)[0]
        words = [word.split("|", 1)[0] for word in shlex.split(command.replace("[", " ")
                                                                    .replace("]", " "))]
        try:
            _parser().parse_args(words[1:])
        except SystemExit as error:
            raise AssertionError(f"the README documents {line!r}, which the CLI refuses") from error


@pytest.mark.parametrize(("flag", "value"), [
    ("--checkpoint-seconds", "nan"), ("--checkpoint-seconds", "inf"),
    ("--checkpoint-seconds", "0"), ("--checkpoint-every", "0"), ("--batch", "-5"),
])
def test_append_refuses_a_setting_that_would_mean_never(cli: Cli, db_path: Path,
                                                        flag: str, value: str) -> None:
    """`nan` seconds between checkpoints would mean no time-based checkpoint, ever."""
    result = cli("append", "--db", db_path, flag, value, stdin=b"")
    assert result.returncode == 3  # a usage error
    assert flag.encode() in result.stderr
    assert not db_path.exists()  # nothing was created
