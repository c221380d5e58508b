"""The canonical form and the hash rule, checked against two independent JCS implementations.

Covers: sealtrail's fast canonical JSON equals our from-the-RFC reference and the `rfc8785`
package on random rows (control characters, non-BMP text, U+2028, DEL, quotes, backslashes);
a stored row, re-canonicalized independently and hashed, equals its `record_hash`; the worked
example in docs/chain-format.md is exactly what the code produces.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import orjson
import rfc8785
from hypothesis import given, settings
from hypothesis import strategies as st

from sealtrail.api.event import Event
from sealtrail.chain.canonical import canonical_json, hash_row, seal
from sealtrail.chain.store import ChainStore

from .conftest import ROOT, events
from .jcs_reference import jcs_bytes

ROW_KEYS = ["action", "agent_id", "event_type", "identity", "prev_hash", "reason", "severity",
            "tenant_id", "timestamp"]
EXTRA_KEY = st.from_regex(r"\A[A-Za-z0-9_][A-Za-z0-9_.:/-]{0,20}\Z")
TEXT = st.text(
    st.characters(codec="utf-8"), max_size=40
) | st.sampled_from(["\u2028\u2029", "\x7f", '"\\', "\x00\x1f", "😀𝄞", "\ue000\U00010000"])
INTEGER = st.integers(min_value=0, max_value=2**53 - 1)


@st.composite
def rows(draw: st.DrawFn) -> dict[str, Any]:
    row: dict[str, Any] = {key: draw(TEXT) for key in draw(st.sets(st.sampled_from(ROW_KEYS)))}
    row["seq"] = draw(INTEGER)
    row["tenant_seq"] = draw(INTEGER)
    if draw(st.booleans()):
        row["extra"] = draw(st.dictionaries(EXTRA_KEY, TEXT, max_size=6))
    if draw(st.booleans()):
        row["risk_tags"] = draw(st.lists(TEXT, max_size=4))
    return row


@settings(max_examples=400, deadline=None)
@given(rows())
def test_canonical_json_equals_two_independent_jcs_implementations(row: dict[str, Any]) -> None:
    ours = canonical_json(row)
    assert ours == jcs_bytes(row)
    assert ours == rfc8785.dumps(row)


@settings(max_examples=200, deadline=None)
@given(rows())
def test_hash_rule_is_sha256_of_jcs_without_record_hash(row: dict[str, Any]) -> None:
    digest, body = seal(dict(row))
    assert digest == hashlib.sha256(jcs_bytes(row)).hexdigest()
    assert digest == hash_row(row)
    assert body == jcs_bytes({**row, "record_hash": digest})


def test_dumped_rows_rehash_independently(db_path: Path) -> None:
    with ChainStore(db_path) as store:
        store.append(events(50))
        dumped = list(store.rows())
    previous: dict[str, str] = {}
    for body in dumped:
        row = json.loads(body)  # the standard library's parser, not the one that wrote it
        claimed = row.pop("record_hash")
        assert hashlib.sha256(jcs_bytes(row)).hexdigest() == claimed
        assert row["prev_hash"] == previous.get(row["tenant_id"], "0" * 64)
        previous[row["tenant_id"]] = claimed
        assert body == jcs_bytes({**row, "record_hash": claimed})


def test_worked_example_in_docs_is_exact() -> None:
    doc = (ROOT / "docs" / "chain-format.md").read_text(encoding="utf-8")
    blocks = dict(re.findall(r"<!-- example:(\w+) -->\s*```\w*\n(.*?)\n```", doc, re.DOTALL))
    row_without_hash = blocks["canonical"]
    assert canonical_json(orjson.loads(row_without_hash)).decode() == row_without_hash
    digest = hashlib.sha256(row_without_hash.encode()).hexdigest()
    assert blocks["hash"].strip() == digest
    stored = json.loads(blocks["row"])
    assert stored["record_hash"] == digest
    stored.pop("record_hash")
    assert jcs_bytes(stored).decode() == row_without_hash


def _found(pattern: str, text: str) -> str:
    match = re.search(pattern, text, re.DOTALL)
    assert match is not None, pattern
    return match.group(match.lastindex or 0)


def test_the_store_writes_the_worked_example_byte_for_byte(tmp_path: Path) -> None:
    """The documented rows are what a store makes of those events, not merely valid JCS."""
    doc = (ROOT / "docs" / "chain-format.md").read_text(encoding="utf-8")
    example_row = _found(r"<!-- example:row -->\s*```\w*\n(.*?)\n```", doc)
    follower = _found(r'\{"action":"user.login"[^\n]*\}', doc)
    example = json.loads(example_row)
    first = Event.model_validate({key: example[key] for key in (
        "decision", "event_type", "extra", "reason", "severity", "tenant_id", "timestamp")})
    second = Event.model_validate({key: value for key, value in json.loads(follower).items()
                                   if key in Event.model_fields})
    with ChainStore(tmp_path / "audit.db") as store:
        store.store_id = example["store_id"]  # the store's random id, fixed to the example's
        store.append([first])
        store.append([second])
        stored = list(store.rows())
    assert stored[0].decode() == example_row
    second_row = orjson.loads(stored[1])
    assert orjson.dumps({k: v for k, v in second_row.items() if k != "record_hash"},
                        option=orjson.OPT_SORT_KEYS).decode() == follower
    assert f"whose hash is `{second_row['record_hash']}`" in doc
