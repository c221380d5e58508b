"""docs/worker-config.md's per-backend examples are configs `sealtrail worker --config` accepts.

Each example is a fenced `yaml` block right after a `<!-- worker-config:KIND -->` line. Every
one is written to a file and loaded exactly as the worker loads it at start (`load_config` with
`WorkerConfig`, then the export engine's `validate_config`), and must hold one export of the
backend it is marked with; that backend is then built, with its credential files moved to a
temporary directory, and reads them as the page says (stripped). All six backends must have
one, so the page cannot lose a backend unnoticed. The Kubernetes resource's `secretKeyRef` (and
`tls.secretName`) in a worker config is refused with a message naming the field.

The page's full example loads too, and shows the admin token (`admin.token`, a file); the page
names every setting a running worker applies live (`LIVE_FIELDS`) and says what the admin
token guards.
"""

from __future__ import annotations

import base64
import copy
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from sealtrail.api.configfile import ConfigFileError, load_config
from sealtrail.api.export import BACKEND_KINDS, CredentialRef, ExportSpec
from sealtrail.api.worker_api import LIVE_FIELDS
from sealtrail.api.worker_config import WorkerConfig
from sealtrail.export.backends.datadog import intake_url
from sealtrail.export.backends.registry import backend_class
from sealtrail.export.backends.splunk import hec_base_url
from sealtrail.export.backends.webhook import signing_keys
from sealtrail.export.credentials import Credential
from sealtrail.export.engine import validate_config
from sealtrail.export.http import HttpClients

from .worker_process import ROOT

DOC = ROOT / "docs" / "worker-config.md"
EXPORTING = ROOT / "docs" / "exporting.md"
_MARKER = re.compile(r"^<!--\s*worker-config:([a-z0-9-]+)\s*-->\s*$")
_OPEN = re.compile(r"^```yaml\s*$")
_CLOSE = re.compile(r"^```\s*$")
#: Kinds with a credential reference (CloudWatch uses the AWS credential chain; syslog none).
WITH_CREDENTIALS = ("splunk", "elastic", "datadog", "webhook")


def marked_blocks() -> dict[str, str]:
    """The yaml block after each `<!-- worker-config:KIND -->` marker, by kind."""
    lines = DOC.read_text(encoding="utf-8").splitlines()
    found: dict[str, str] = {}
    for number, line in enumerate(lines):
        marker = _MARKER.match(line.strip())
        if not marker:
            continue
        kind = marker.group(1)
        assert kind not in found, f"two blocks are marked {kind}"
        start = next((i for i in range(number + 1, len(lines)) if lines[i].strip()), None)
        assert start is not None, f"nothing follows the {kind} marker"
        assert _OPEN.match(lines[start]), f"the {kind} marker is not followed by a yaml block"
        end = next((i for i in range(start + 1, len(lines)) if _CLOSE.match(lines[i])), None)
        assert end is not None, f"the {kind} block is not closed"
        found[kind] = "\n".join(lines[start + 1:end]) + "\n"
    return found


def load_block(kind: str, tmp_path: Path) -> WorkerConfig:
    """The block for `kind`, loaded as the worker loads its config file at start."""
    block = marked_blocks().get(kind)
    assert block is not None, f"docs/worker-config.md has no worker config for {kind}"
    path = tmp_path / f"{kind}.yaml"
    path.write_text(block, encoding="utf-8")
    config = load_config(path, WorkerConfig)
    validate_config(config)
    return config


def credential_paths(data: Any, path: tuple[str | int, ...] = ()) -> list[tuple[str | int, ...]]:
    """Where the `{file: ...}` / `{env: ...}` references are in loaded YAML."""
    found: list[tuple[str | int, ...]] = []
    if isinstance(data, dict):
        if set(data) in ({"file"}, {"env"}):
            return [path]
        for key, value in data.items():
            found += credential_paths(value, (*path, key))
    elif isinstance(data, list):
        for index, value in enumerate(data):
            found += credential_paths(value, (*path, index))
    return found


def at(data: Any, path: tuple[str | int, ...]) -> Any:
    for part in path:
        data = data[part]
    return data


def dotted(path: tuple[str | int, ...]) -> str:
    return "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in path)[1:]


# -- the examples -------------------------------------------------------------------------------


def test_every_backend_has_an_example() -> None:
    assert set(marked_blocks()) == set(BACKEND_KINDS)


@pytest.mark.parametrize("kind", BACKEND_KINDS)
def test_the_example_loads_as_the_worker_loads_it(kind: str, tmp_path: Path) -> None:
    config = load_block(kind, tmp_path)
    assert len(config.exports) == 1, f"the {kind} example should hold one export"
    (export,) = config.exports
    assert export.kind == kind
    # Secrets are files, as a mounted Secret is; never inline and never the resource's form.
    for where, ref in export.credentials():
        assert ref.file is not None, where
        assert ref.file.startswith("/"), where
    backend = backend_class(kind)(export, HttpClients())
    assert backend.kind == kind


@pytest.mark.parametrize("kind", WITH_CREDENTIALS)
def test_the_backend_reads_the_examples_credential_files_stripped(kind: str,
                                                                  tmp_path: Path) -> None:
    export = load_block(kind, tmp_path).exports[0]
    raw = export.model_dump(by_alias=True, exclude_none=True)
    paths = credential_paths(raw)
    assert paths, f"the {kind} example names no credential file"
    values = {}
    for number, path in enumerate(paths):
        secret = tmp_path / "secrets" / f"{number}"
        secret.parent.mkdir(exist_ok=True)
        value = f"value-{number}"
        if kind == "webhook":
            value = "whsec_" + base64.b64encode(b"k" * 32).decode()
        secret.write_text(f"  {value}\n\n", encoding="utf-8")  # as `echo` or an editor leaves it
        at(raw, path[:-1])[path[-1]] = {"file": str(secret)}
        values[str(secret)] = value
    backend = backend_class(kind)(ExportSpec.model_validate(raw), HttpClients())
    read = {str(credential.ref.file): credential.value() for credential in backend.credentials()}
    assert read == values


def test_splunk_hec_url_is_the_base_url_and_a_pasted_collector_path_is_dropped(
        tmp_path: Path) -> None:
    hec_url = load_block("splunk", tmp_path).exports[0].splunk.hec_url  # type: ignore[union-attr]
    assert "/services/collector" not in hec_url
    for pasted in ("/services/collector", "/services/collector/event",
                   "/services/collector/raw/1.0/"):
        assert hec_base_url(hec_url.rstrip("/") + pasted) == hec_base_url(hec_url)


def test_datadog_url_replaces_the_site_and_may_carry_the_intake_path(tmp_path: Path) -> None:
    spec = load_block("datadog", tmp_path).exports[0].datadog
    assert spec is not None
    assert intake_url(spec) == f"https://http-intake.logs.{spec.site}/api/v2/logs"
    relay = spec.model_copy(update={"url": "https://dd-relay.example.com:8443"})
    assert intake_url(relay) == "https://dd-relay.example.com:8443/api/v2/logs"
    pasted = spec.model_copy(update={"url": "https://dd-relay.example.com:8443/api/v2/logs"})
    assert intake_url(pasted) == intake_url(relay)


def test_a_webhook_secret_file_during_a_rotation_gives_two_keys(tmp_path: Path) -> None:
    old, new = b"o" * 32, b"n" * 24
    secret = tmp_path / "secret"
    secret.write_text(f"whsec_{base64.b64encode(old).decode()}\n"
                      f"whsec_{base64.b64encode(new).decode()}\n", encoding="utf-8")
    assert signing_keys(Credential(CredentialRef(file=str(secret))).value()) == [old, new]


# -- what a worker refuses ----------------------------------------------------------------------


@pytest.mark.parametrize("kind", WITH_CREDENTIALS)
def test_the_resources_secret_key_ref_is_refused_naming_the_field(kind: str,
                                                                  tmp_path: Path) -> None:
    data = yaml.safe_load(marked_blocks()[kind])
    path = credential_paths(data)[0]
    resource_form = copy.deepcopy(data)
    at(resource_form, path[:-1])[path[-1]] = {"secretKeyRef": {"name": "siem", "key": "token"}}
    config = tmp_path / "resource-form.yaml"
    config.write_text(yaml.safe_dump(resource_form), encoding="utf-8")
    with pytest.raises(ConfigFileError) as refused:
        load_config(config, WorkerConfig)
    field = f"{dotted(path)}.secretKeyRef"
    assert any(problem.startswith(f"{field}: a worker reads secrets from {{file:}} or {{env:}}")
               for problem in refused.value.problems), refused.value.problems


def test_the_resources_tls_secret_name_is_refused_naming_the_field(tmp_path: Path) -> None:
    data = yaml.safe_load(marked_blocks()["syslog"])
    data["exports"][0]["tls"] = {"secretName": "syslog-tls"}
    config = tmp_path / "resource-form.yaml"
    config.write_text(yaml.safe_dump(data), encoding="utf-8")
    with pytest.raises(ConfigFileError) as refused:
        load_config(config, WorkerConfig)
    assert any(problem.startswith("exports[0].tls.secretName: a worker reads caFile")
               for problem in refused.value.problems), refused.value.problems


def test_exporting_md_no_longer_promises_the_worker() -> None:
    assert "will run the same engine" not in EXPORTING.read_text(encoding="utf-8")


# -- the full example and the admin token ----------------------------------------------------


def full_example() -> str:
    """The first yaml block after `## A full example`."""
    text = DOC.read_text(encoding="utf-8").split("## A full example", 1)[1]
    return text.split("```yaml\n", 1)[1].split("\n```", 1)[0] + "\n"


def test_the_full_example_loads_and_has_an_admin_token(tmp_path: Path) -> None:
    path = tmp_path / "worker.yaml"
    path.write_text(full_example(), encoding="utf-8")
    config = load_config(path, WorkerConfig)
    assert config.admin.listen is not None
    assert config.admin.token is not None
    assert config.admin.token.file is not None
    assert config.admin.token.file.startswith("/")
    assert config.handoff is not None  # both ends of a handoff, shown once
    assert config.handoff.url is not None
    assert config.handoff.token is not None
    assert config.handoff.accept is not None


def test_the_page_names_every_live_setting_and_the_admin_token_rules() -> None:
    text = DOC.read_text(encoding="utf-8")
    live = text.split("## Live changes, no restart", 1)[1].split("\n## ", 1)[0]
    for path in LIVE_FIELDS:
        assert f"`{'.'.join(path)}`" in live, path
    admin = text.split("### The admin token", 1)[1].split("\n## ", 1)[0]
    for needed in ("Authorization: Bearer", "401", "WWW-Authenticate", "/healthz", "/readyz",
                   "credential_version", "rotation", "no admin.token"):
        assert needed in admin, needed
