"""The `sealtrail` command line: keygen, append, dump, checkpoint, verify, compact, ui, demo.

Exit codes are part of the interface, so scripts and CI jobs can act on them:
0 success (for verify: intact), 1 tampered (verify) or input rejected (append),
2 truncated or rolled back (verify), 3 usage or I/O error.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, NoReturn, TextIO

import orjson
from pydantic import ValidationError

from sealtrail import __version__
from sealtrail.api.configfile import ConfigFileError
from sealtrail.api.errors import FieldError, field_errors
from sealtrail.api.event import MAX_EVENT_BYTES, Event
from sealtrail.chain.checkpoint import (
    Checkpoint,
    CheckpointFileError,
    read_checkpoints,
    write_checkpoints,
)
from sealtrail.chain.keys import (
    KeyFileError,
    PublicKey,
    generate_keypair,
    load_public_key,
    load_signer,
)
from sealtrail.chain.store import (
    ChainStore,
    CheckpointPolicy,
    EventTooLargeError,
    Stored,
    StoreError,
)
from sealtrail.chain.verify import (
    Status,
    TenantReport,
    VerifyError,
    VerifyReport,
    verify_rows,
    verify_store,
)

__all__ = ["main"]

EXIT_OK = 0
EXIT_REJECTED = 1
EXIT_USAGE = 3


class UsageError(Exception):
    """A problem with how the command was called or with a file it was pointed at."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # argparse exits 2 on usage errors, but 2 means "truncated" to `verify`'s callers.
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _add_ui_parser(commands: Any) -> None:
    ui = commands.add_parser("ui", help="serve the audit UI over a store file (read-only)")
    ui.add_argument("--db", type=Path, required=True)
    ui.add_argument("--listen", default="127.0.0.1:8480", metavar="HOST:PORT",
                    help="where to listen (default 127.0.0.1:8480: anyone who reaches it "
                         "sees every tenant)")
    ui.add_argument("--pubkey", type=Path, action="append", default=[],
                    help="public key to check checkpoint signatures with (repeatable)")
    ui.add_argument("--index", action="store_true",
                    help="add the search indexes to the file (fast filters on a large store; "
                         "a write, though no row changes)")


def _add_operator_parser(commands: Any) -> None:
    operator = commands.add_parser("operator", help="run the Kubernetes operator (kopf)")
    operator.add_argument("--namespace", action="append", default=[], dest="namespaces",
                          help="watch this namespace (repeat); default: every namespace")
    operator.add_argument("--poll-seconds", type=float, default=5.0,
                          help="how often each AuditExport asks its workers for status")
    operator.add_argument("--policy-resync-seconds", type=float, default=30.0)
    operator.add_argument("--default-image", default=None,
                          help="worker image when a policy names none")
    operator.add_argument("--webhook-port", type=int, default=9443)
    operator.add_argument("--webhook-host", action="append", default=[], dest="webhook_hosts",
                          help="DNS name or IP the webhook certificate is for (repeat)")
    operator.add_argument("--webhook-cert-dir", type=Path,
                          help="tls.crt, tls.key (and ca.crt) to serve with; default: self-made")
    operator.add_argument("--webhook-configuration", default="sealtrail",
                          help="MutatingWebhookConfiguration to write a self-made CA into")
    operator.add_argument("--no-webhook", action="store_true", help="no sidecar injection")
    operator.add_argument("--liveness-port", type=int, default=8080,
                          help="serves /healthz, /readyz and /metrics")
    operator.add_argument("--worker-image-pull-secret", action="append", default=[],
                          dest="worker_image_pull_secrets",
                          help="a Secret (in each pod's namespace) to pull the worker image "
                               "with, for every injected pod (repeat)")
    operator.add_argument("--release-namespace",
                          default=os.environ.get("POD_NAMESPACE", "sealtrail"),
                          help="the operator's namespace (its Lease and webhook certificate)")
    operator.add_argument("--release-name", default="sealtrail",
                          help="prefix of the Lease and the webhook certificate's Secret")
    operator.add_argument("--heartbeat-seconds", type=_positive_seconds, default=60.0,
                          help="how often status is refreshed even when nothing changed")
    operator.add_argument("--secret-refresh-seconds", type=_positive_seconds, default=30.0,
                          help="how often the Secrets that resources name are re-read")
    operator.add_argument("--lease-seconds", type=int, default=15,
                          help="how long a leader's Lease lasts without renewal")
    operator.add_argument("--webhook-cert-days", type=_positive_seconds, default=365.0,
                          help="lifetime of the webhook's serving certificate")
    operator.add_argument("--webhook-ca-days", type=_positive_seconds, default=5 * 365.0,
                          help="lifetime of the webhook's CA")
    operator.add_argument("--webhook-cert-check-seconds", type=_positive_seconds, default=60.0,
                          help="how often replicas re-read (and the leader renews) it")


def _positive_seconds(text: str) -> float:
    """A finite number of seconds above 0 (`nan` or `inf` would mean "never")."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"{text} must be a finite number of seconds above 0")
    return value


def _positive_count(text: str) -> int:
    """A whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


def _seq_bound(text: str) -> int:
    """A `seq` to read after: rows start at 1, so 0 or more, and within SQLite's 64 bits."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if not 0 <= value <= 2**63 - 1:
        raise argparse.ArgumentTypeError(
            f"{value} is out of range: rows start at seq 1, so give 0 (every row) up to "
            f"{2**63 - 1}")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="sealtrail", description=__doc__.split("\n", 1)[0])
    parser.add_argument("--version", action="version", version=f"sealtrail {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    keygen = commands.add_parser("keygen", help="create an Ed25519 checkpoint signing key")
    keygen.add_argument("--out", type=Path, required=True, help="private key file; FILE.pub too")

    append = commands.add_parser("append", help="append NDJSON events from stdin")
    append.add_argument("--db", type=Path, required=True)
    append.add_argument("--batch", type=_positive_count, default=500,
                        help="events per transaction")
    append.add_argument("--tenant", default="default", help="tenant for events that name none")
    append.add_argument("--synchronous", choices=["FULL", "EXTRA", "NORMAL"], default="FULL")
    append.add_argument("--checkpoint-key", type=Path, help="sign checkpoints with this key")
    append.add_argument("--checkpoint-every", type=_positive_count, default=1000, metavar="ROWS")
    append.add_argument("--checkpoint-seconds", type=_positive_seconds, default=60.0,
                        metavar="SECONDS")

    dump = commands.add_parser("dump", help="print rows as NDJSON, exactly as exported")
    dump.add_argument("--db", type=Path, required=True)
    dump.add_argument("--tenant")
    dump.add_argument("--since-seq", type=_seq_bound, default=0, metavar="N",
                      help="rows with seq greater than N (0 or more)")

    checkpoint = commands.add_parser("checkpoint", help="sign checkpoints now; write them out")
    checkpoint.add_argument("--db", type=Path, required=True)
    checkpoint.add_argument("--key", type=Path, required=True)
    checkpoint.add_argument("--out", type=Path, required=True)
    checkpoint.add_argument("--tenant", action="append", help="only this tenant (repeatable)")

    verify = commands.add_parser("verify", help="recompute every chain; compare to checkpoints")
    source = verify.add_mutually_exclusive_group(required=True)
    source.add_argument("--db", type=Path, help="a chain store")
    source.add_argument("--rows", type=Path,
                        help="NDJSON rows exported from a SIEM (each line one row as shipped)")
    verify.add_argument(
        "--checkpoints",
        type=Path,
        help="a file from `sealtrail checkpoint`, or NDJSON rows exported from the SIEM",
    )
    verify.add_argument(
        "--pubkey", type=Path, action="append", default=[], help="public key (repeatable)"
    )
    verify.add_argument("--tenant")
    verify.add_argument("--json", action="store_true", help="print a JSON report")
    verify.add_argument("--processes", type=int, help="worker processes (default: all cores)")

    compact = commands.add_parser(
        "compact", help="rewrite a store made before retention so that pruning shrinks it "
                        "(stop the worker first)")
    compact.add_argument("--db", type=Path, required=True)

    export = commands.add_parser("export", help="ship the store to the configured SIEMs")
    export.add_argument("--db", type=Path, required=True)
    export.add_argument("--config", type=Path, required=True, help="YAML: exports and routes")
    export.add_argument(
        "--until-drained", action="store_true",
        help="exit once everything stored is delivered (status 0) or --timeout passes (1)",
    )
    export.add_argument("--timeout", type=float, default=300.0, metavar="SECONDS")

    worker = commands.add_parser("worker", help="run the worker: ingest, export, status")
    worker.add_argument("--config", type=Path, required=True, help="worker config (YAML)")
    worker.add_argument("--ingest-process", help=argparse.SUPPRESS)  # set by the worker itself

    _add_operator_parser(commands)

    crds = commands.add_parser("crds", help="write or check crds/ and the CRD reference")
    crds.add_argument("mode", choices=["write", "check"])

    _add_ui_parser(commands)

    demo = commands.add_parser("demo", help="run the embedded demo end to end")
    demo.add_argument("--dir", type=Path, default=Path("demo-out"), help="where to put its files")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit code."""
    args = _parser().parse_args(argv)
    try:
        match args.command:
            case "keygen":
                return _keygen(args)
            case "append":
                return _append(args, sys.stdin.buffer, sys.stdout)
            case "dump":
                return _dump(args, sys.stdout.buffer)
            case "checkpoint":
                return _checkpoint(args)
            case "verify":
                return _verify(args)
            case "compact":
                return _compact(args)
            case "worker":
                from sealtrail.worker.main import run_worker  # noqa: PLC0415 - heavy imports

                return run_worker(args.config, args.ingest_process)
            case "operator":
                return _operator(args)
            case "crds":
                from sealtrail.crd.generate import main as crdgen  # noqa: PLC0415

                return crdgen([f"--{args.mode}"])
            case "export":
                from sealtrail.export.run import run_export  # noqa: PLC0415 - heavy imports

                return run_export(args.db, args.config, until_drained=args.until_drained,
                                  timeout_seconds=args.timeout)
            case "ui":
                return _ui(args)
            case "demo":
                from sealtrail.demo import run_demo  # noqa: PLC0415 - only the demo needs it

                return run_demo(args.dir)
    except (UsageError, KeyFileError, CheckpointFileError, StoreError, VerifyError,
            ConfigFileError, ValueError) as error:
        print(f"sealtrail {args.command}: {error}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:
        return EXIT_OK  # `sealtrail dump | head` is fine
    raise AssertionError(args.command)  # pragma: no cover - argparse allows only the above


def _ui(args: argparse.Namespace) -> int:
    from sealtrail.ui.local import run_local  # noqa: PLC0415 - aiohttp and Jinja2 only here

    if not args.db.is_file():
        raise UsageError(f"{args.db}: no such store")
    if ":" not in args.listen or not args.listen.rpartition(":")[2].isdigit():
        raise UsageError(f"--listen: {args.listen!r} is not HOST:PORT")
    return run_local(args.db, args.listen, [load_public_key(path) for path in args.pubkey],
                     index=args.index)


def _keygen(args: argparse.Namespace) -> int:
    signer = generate_keypair(args.out)
    print(orjson.dumps({"key": str(args.out), "public_key": f"{args.out}.pub",
                        "key_id": signer.key_id}).decode())
    return EXIT_OK


def _open_existing(path: Path, **options: Any) -> ChainStore:
    if not path.exists():
        raise UsageError(f"{path}: no such store")
    return ChainStore(path, **options)


# -- append ------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Batch:
    """Up to `--batch` non-empty input lines: the events that parsed, the errors of the rest."""

    first_line: int = 0
    last_line: int = 0
    lines: int = 0
    events: list[tuple[int, Event]] = field(default_factory=list)
    errors: list[tuple[int, FieldError]] = field(default_factory=list)


def _read_batches(stream: BinaryIO, size: int) -> Iterator[_Batch]:
    """Group NDJSON lines into batches, parsing and validating every line."""
    batch = _Batch()
    for number, line in enumerate(stream, start=1):
        if not line.strip():
            continue
        batch.first_line = batch.first_line or number
        batch.last_line = number
        batch.lines += 1
        try:
            batch.events.append((number, Event.model_validate_json(line)))
        except ValidationError as error:
            batch.errors.extend((number, problem) for problem in field_errors(error))
        if batch.lines >= size:
            yield batch
            batch = _Batch()
    if batch.lines:
        yield batch


def _append(args: argparse.Namespace, stream: BinaryIO, out: TextIO) -> int:
    if args.batch < 1:
        raise UsageError("--batch must be at least 1")
    policy = None
    if args.checkpoint_key is not None:
        policy = CheckpointPolicy(
            load_signer(args.checkpoint_key), args.checkpoint_every, args.checkpoint_seconds
        )
    summary: dict[str, Any] = {"stored": 0, "first_seq": None, "last_seq": None, "tenants": {}}
    rejected: list[dict[str, Any]] = []
    with ChainStore(
        args.db, synchronous=args.synchronous, default_tenant=args.tenant, checkpoints=policy
    ) as store:
        for batch in _read_batches(stream, args.batch):
            errors = batch.errors
            if not errors:
                try:
                    stored = store.append([event for _, event in batch.events])
                except EventTooLargeError as error:
                    line = batch.events[error.index][0]
                    errors = [(line, FieldError("", f"event is {error.size} bytes serialized; "
                                                    f"the limit is {MAX_EVENT_BYTES}"))]
                else:
                    _record(summary, stored)
                    continue
            for number, problem in errors:
                print(f"line {number}: {problem}", file=sys.stderr)
            span = f"{batch.first_line}-{batch.last_line}"
            print(f"lines {span}: batch rejected, nothing of it stored", file=sys.stderr)
            rejected.append({
                "lines": [batch.first_line, batch.last_line],
                "errors": [{"line": number, "field": problem.field, "message": problem.message}
                           for number, problem in errors],
            })
    summary["rejected_batches"] = rejected
    print(orjson.dumps(summary).decode(), file=out)
    return EXIT_REJECTED if rejected else EXIT_OK


def _record(summary: dict[str, Any], stored: list[Stored]) -> None:
    summary["stored"] += len(stored)
    summary["first_seq"] = summary["first_seq"] or stored[0].seq
    summary["last_seq"] = stored[-1].seq
    for item in stored:
        entry = summary["tenants"].setdefault(
            item.tenant_id, {"first_tenant_seq": item.tenant_seq, "stored": 0}
        )
        entry["last_tenant_seq"] = item.tenant_seq
        entry["stored"] += 1


# -- dump, checkpoint --------------------------------------------------------------------------


def _dump(args: argparse.Namespace, out: BinaryIO) -> int:
    with _open_existing(args.db) as store:
        rows = store.rows(tenant=args.tenant, after_seq=args.since_seq)
        out.writelines(body + b"\n" for body in rows)
    out.flush()
    return EXIT_OK


def _checkpoint(args: argparse.Namespace) -> int:
    signer = load_signer(args.key)
    with _open_existing(args.db) as store:
        made = store.checkpoint(signer, args.tenant)
        latest = [
            checkpoint
            for name in (args.tenant or [None])
            for checkpoint in store.latest_checkpoints(name)
        ]
    write_checkpoints(args.out, latest)
    print(orjson.dumps({
        "signed": len(made), "written": len(latest), "out": str(args.out), "key_id": signer.key_id,
    }).decode())
    return EXIT_OK


def _compact(args: argparse.Namespace) -> int:
    """VACUUM once with incremental auto-vacuum on (see `ChainStore.compact`)."""
    with _open_existing(args.db) as store:
        already = store.incremental_vacuum
        before, after = store.compact()
    print(orjson.dumps({"db": str(args.db), "bytes_before": before, "bytes_after": after,
                        "was_incremental": already}).decode())
    return EXIT_OK


# -- verify ------------------------------------------------------------------------------------


class _Progress:
    """A one-line progress bar on a terminal; silent otherwise."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._active = stream.isatty()
        self._last = 0.0

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if not self._active or total < 50_000 or (now - self._last < 0.1 and done < total):
            return
        self._last = now
        width = 30
        filled = width * done // max(total, 1)
        bar = "#" * filled + "-" * (width - filled)
        self._stream.write(f"\rverifying [{bar}] {done:,}/{total:,} rows")
        if done >= total:
            self._stream.write("\n")
        self._stream.flush()


def _chain_name(store_id: str | None, tenant: str) -> str:
    """A chain in messages: its tenant, and its store when its rows name one."""
    return tenant if store_id is None else f"{tenant} (store {store_id})"


def _verify_rows(args: argparse.Namespace, keys: list[PublicKey],
                 checkpoints: list[Checkpoint]) -> int:
    """Re-check the chains from a SIEM's copy of the rows, as `--db` checks a store's."""
    try:
        lines = args.rows.read_bytes().splitlines()
    except OSError as error:
        raise UsageError(f"cannot read {args.rows}: {error.strerror}") from None
    try:
        report = verify_rows(lines, tenant=args.tenant, checkpoints=checkpoints,
                             public_keys=keys)
    except VerifyError as error:
        raise UsageError(f"{args.rows}: not NDJSON rows as sealtrail ships them "
                         f"({error})") from None
    if args.json:
        print(orjson.dumps(report.to_json(), option=orjson.OPT_INDENT_2).decode())
        return int(report.status)
    for chain in report.tenants:
        for finding in chain.findings:
            print(f"{finding.status.name:<9} {_chain_name(chain.store_id, chain.tenant_id)}: "
                  f"{finding.problem}")
    checked = sum(chain.checkpoints_checked for chain in report.tenants)
    stores = len({chain.store_id for chain in report.tenants})
    tenants = len({chain.tenant_id for chain in report.tenants})
    plural = f" from {stores} stores" if stores > 1 else ""
    print(f"{report.status.name.lower()}: {report.rows} rows in {len(report.tenants)} chains "
          f"({tenants} tenants{plural}), {checked} signed checkpoints checked")
    if not checked:
        print("note: no checkpoint was checked (none in the rows or --checkpoints, or no "
              "--pubkey): a removed tail is not detectable", file=sys.stderr)
    return int(report.status)


def _verify(args: argparse.Namespace) -> int:
    if args.checkpoints is not None and not args.pubkey:
        raise UsageError("--checkpoints needs --pubkey: a checkpoint is only evidence if its "
                         "signature is checked")
    keys = [load_public_key(path) for path in args.pubkey]
    checkpoints = read_checkpoints(args.checkpoints) if args.checkpoints else []
    if args.rows is not None:
        return _verify_rows(args, keys, checkpoints)
    report = verify_store(
        args.db,
        tenant=args.tenant,
        checkpoints=checkpoints,
        public_keys=keys,
        processes=args.processes,
        progress=None if args.json else _Progress(sys.stderr),
    )
    if args.json:
        print(orjson.dumps(report.to_json(), option=orjson.OPT_INDENT_2).decode())
    else:
        _print_report(report, keys_given=bool(keys))
    return int(report.status)


def _pruned_lines(tenant: TenantReport, *, keys_given: bool) -> list[str]:
    """What retention removed from a chain, and what vouches for the rest, for a person."""
    anchor = tenant.pruned
    if anchor is None:
        return []
    checkpoint = anchor.checkpoint
    unchecked = "" if keys_given else " (its signature was not checked: no --pubkey)"
    vouched = (f"          rows 1..{anchor.tenant_seq} pruned, vouched for by the checkpoint of "
               f"rows 1..{checkpoint.tenant_seq} signed at {checkpoint.signed_at} by key "
               f"{checkpoint.key_id}{unchecked}")
    lines = [vouched]
    if tenant.checkpoints_pruned:
        lines.append(f"          {tenant.checkpoints_pruned} checkpoints given are for pruned "
                     "rows: pruned, cannot be re-checked here (the SIEM holds those rows: "
                     "verify --rows)")
    return lines


def _print_report(report: VerifyReport, *, keys_given: bool = False) -> None:
    for finding in report.store_findings:
        print(f"{finding.status.name:<9} store: {finding.problem}")
    if report.other_stores:
        count = sum(report.other_stores.values())
        print(f"note: {count} checkpoints given are other stores' (a SIEM export holds every "
              f"replica's chains) and were not used; this store is {report.store_id}")
    for tenant in report.tenants:
        bad = tenant.first_bad
        if bad is None:
            print(
                f"ok        tenant {tenant.tenant_id}: {tenant.rows} rows, head "
                f"{tenant.head_hash[:16]}…, {tenant.checkpoints_checked} checkpoints checked"
            )
        else:
            print(
                f"{bad.status.name:<9} tenant {tenant.tenant_id}: first bad tenant_seq "
                f"{bad.tenant_seq}: {bad.problem}"
            )
        for line in _pruned_lines(tenant, keys_given=keys_given):
            print(line)
    verdict = report.status
    pruned = (f"; {report.pruned_rows} older rows were pruned (delivered; the SIEM holds them)"
              if report.pruned_rows else "")
    print(f"{verdict.name.lower()}: {report.rows} rows in {len(report.tenants)} tenant chains"
          f" of store {report.store_id or '(made before store ids)'}{pruned}")
    if verdict is Status.INTACT and not report.checkpoints_given:
        print(
            "note: without --checkpoints (kept outside this store), a removed tail or a rewrite "
            "with recomputed hashes cannot be detected",
        )


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())


def _operator(args: argparse.Namespace) -> int:
    from sealtrail.operator.config import (  # noqa: PLC0415
        DEFAULT_IMAGE,
        OperatorConfig,
        WebhookConfig,
    )
    from sealtrail.operator.main import run_operator  # noqa: PLC0415 - heavy imports

    webhook = None if args.no_webhook else WebhookConfig(
        port=args.webhook_port, hosts=tuple(args.webhook_hosts) or ("localhost",),
        cert_dir=args.webhook_cert_dir, configuration=args.webhook_configuration or None,
        ca_days=args.webhook_ca_days, leaf_days=args.webhook_cert_days,
        check_seconds=args.webhook_cert_check_seconds)
    return run_operator(OperatorConfig(
        namespaces=tuple(args.namespaces), poll_seconds=args.poll_seconds,
        policy_resync_seconds=args.policy_resync_seconds,
        default_image=args.default_image or DEFAULT_IMAGE,
        webhook=webhook, liveness_port=args.liveness_port or None,
        release_namespace=args.release_namespace, release_name=args.release_name,
        worker_image_pull_secrets=tuple(args.worker_image_pull_secrets),
        heartbeat_seconds=args.heartbeat_seconds,
        secret_refresh_seconds=args.secret_refresh_seconds, lease_seconds=args.lease_seconds))

