"""The user documentation, the GitOps example and the image, held to what can run here.

* docs/quickstart.md: every command in its `sh` blocks and `$ ` lines either runs here, or is
  excused by a rule that says why (a container engine, a running pod, Splunk, the package
  registry, the kubelet's exec and port-forward API). What runs, on a new real cluster
  (tests/control_plane.py: kube-apiserver, kube-controller-manager, etcd, and the tests' node
  running the image built from the Dockerfile): the `export`s, `helm install` of the chart (and
  its rendering, validated with kubernetes-validate, strict), every `kubectl` command with the
  real kubectl (the quickstart's `audit.yaml` and `app.yaml` are the fenced `yaml` blocks,
  applied as written, and the Deployment's rollout completes with the worker injected), the
  `helm template | kubectl apply` path's rendering, `sealtrail keygen` and `--version`, the
  SIEM-side script on rows from a real store made from the quickstart's own event, and the
  `sealtrail verify --checkpoints` that the quickstart runs inside the worker, run here on that
  store. Console samples are compared with the real output, hashes masked.
* docs/siem-verification.md: its script (extracted from the page) on rows from real stores:
  two workers' chains interleaved and copied, a changed row, a removed row, a forged checkpoint,
  a time window; `--save-chains` with `sealtrail verify`; the SPL hash recipe's text surgery.
* examples/09-gitops: kinds and API versions; every path a manifest names exists; the chart
  renders with the values the Application and the HelmRelease give it; Flux's `dependsOn` and
  source ignore rules; the kustomize output applies to the real API server with the CRDs.
* The image: the base image pinned to a 3.11 patch tag (the venv's minor) with the digest's
  pinning explained; non-root 65532, no ADD, `PYTHONDONTWRITEBYTECODE`, no HEALTHCHECK,
  `ENTRYPOINT ["sealtrail"]` with `CMD ["operator"]`; docker/requirements-runtime.txt is
  exactly the runtime closure of pyproject's dependencies at requirements.lock's versions, covers
  every third-party import of operator/sealtrail, and suffices to import every module with
  nothing else on the path; every runtime wheel runs on bookworm's glibc; the .dockerignore'd
  context builds a complete wheel with the lock's setuptools.
* Every relative link (and anchor) in docs/ and the GitOps README points at something that
  exists; operations.md has the anchors the alerts link to.

The image itself is built from the Dockerfile with buildah (scripts/build_image.sh) and run by
the tests' node; tests/test_image.py checks what it runs as and what it may write.
"""

from __future__ import annotations

import ast
import email.parser
import hashlib
import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kubernetes_validate
import orjson
import pathspec
import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

from sealtrail.api.event import Event

from .conftest import fresh_control_plane
from .control_plane import ControlPlane
from .worker_process import ROOT

DOCS = ROOT / "docs"
QUICKSTART = DOCS / "quickstart.md"
SIEM_DOC = DOCS / "siem-verification.md"
OPERATIONS = DOCS / "operations.md"
GITOPS = ROOT / "examples" / "09-gitops"
CHART = ROOT / "helm" / "sealtrail"
TOOLS = ROOT / ".tools" / "bin"
VENV_BIN = Path(sys.executable).parent
DOCKERFILE = ROOT / "Dockerfile"
RUNTIME_REQUIREMENTS = ROOT / "docker" / "requirements-runtime.txt"
PLACEHOLDER_REPO = "https://git.example.com/platform/sealtrail.git"
HEX_RUN = re.compile(r"[0-9a-f]{4,}…|\b[0-9a-f]{32}\b")  # hashes cut short; store ids


# -- Markdown ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Block:
    """A fenced code block: its language, its text, and the line before its fence."""

    language: str
    text: str
    before: str


_FENCE = re.compile(r"^(\s*)```(\S*)\s*$")


def blocks(path: Path) -> list[Block]:
    found: list[Block] = []
    lines = path.read_text(encoding="utf-8").splitlines()
    index = 0
    while index < len(lines):
        opening = _FENCE.match(lines[index])
        if not opening:
            index += 1
            continue
        indent, language = opening.groups()
        before = next((line for line in reversed(lines[:index]) if line.strip()), "")
        body: list[str] = []
        index += 1
        while index < len(lines) and not re.match(r"^\s*```\s*$", lines[index]):
            body.append(lines[index].removeprefix(indent))
            index += 1
        found.append(Block(language, "\n".join(body) + "\n", before.strip()))
        index += 1
    return found


def prose(path: Path) -> list[str]:
    """The lines outside fenced blocks, inline code removed."""
    kept, inside = [], False
    for line in path.read_text(encoding="utf-8").splitlines():
        if _FENCE.match(line) or (inside and re.match(r"^\s*```\s*$", line)):
            inside = not inside
            continue
        if not inside:
            # A code span opens and closes with the same run of backticks (``a`b`` is one).
            kept.append(re.sub(r"(`+)(?:(?!\1).)+?\1", "", line))
    return kept


def slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    found: set[str] = set()
    inside = False
    for line in path.read_text(encoding="utf-8").splitlines():
        if re.match(r"^\s*```", line):
            inside = not inside
            continue
        heading = re.match(r"^#{1,6}\s+(.*?)\s*$", line)
        if heading and not inside:
            base = slug(heading.group(1))
            name, number = base, 0
            while name in found:
                number += 1
                name = f"{base}-{number}"
            found.add(name)
    return found


def shell_commands(text: str) -> list[str]:
    """Commands of a shell block: continuation lines joined, heredocs kept with their command."""
    lines = text.splitlines()
    commands: list[str] = []
    index = 0
    while index < len(lines):
        line = lines[index]
        index += 1
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        command = [line]
        while command[-1].rstrip().endswith("\\") and index < len(lines):
            command.append(lines[index])
            index += 1
        heredoc = re.search(r"<<-?'?(\w+)'?", " ".join(command))
        if heredoc:
            while index < len(lines):
                command.append(lines[index])
                index += 1
                if command[-1].strip() == heredoc.group(1):
                    break
        commands.append("\n".join(command))
    return commands


def one_line(command: str) -> str:
    """The command on one line (continuations joined), without a heredoc's body."""
    return re.sub(r"\\\n\s*", "", command).split("\n")[0].strip()


def masked(text: str) -> list[str]:
    return [HEX_RUN.sub("H…", line).rstrip() for line in text.strip().splitlines()]


# -- running things ----------------------------------------------------------------------------


def run(args: list[str], *, cwd: Path = ROOT, env: dict[str, str] | None = None,
        stdin: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(args, cwd=cwd, env=env, input=stdin, capture_output=True, text=True,
                          timeout=120, check=False)
    if check:
        assert done.returncode == 0, f"{args}: {done.stderr}{done.stdout}"
    return done


def tool_env(kubeconfig: Path | None = None, home: Path | None = None) -> dict[str, str]:
    env = dict(os.environ, PATH=f"{TOOLS}{os.pathsep}{VENV_BIN}{os.pathsep}{os.environ['PATH']}")
    if kubeconfig is not None:
        env["KUBECONFIG"] = str(kubeconfig)
    if home is not None:
        env["HOME"] = str(home)
    return env


def sealtrail(*args: str, cwd: Path, stdin: str | None = None,
              check: bool = True) -> subprocess.CompletedProcess[str]:
    return run([str(VENV_BIN / "sealtrail"), *args], cwd=cwd, stdin=stdin, check=check)


def validate_objects(documents: list[dict[str, Any]], *versions: str) -> None:
    for document in documents:
        for version in versions:
            kubernetes_validate.validate(document, version, strict=True)


def helm_template(*args: str) -> list[dict[str, Any]]:
    done = run([str(TOOLS / "helm"), "template", *args])
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def chart_kube_version() -> str:
    declared = yaml.safe_load((CHART / "Chart.yaml").read_text())["kubeVersion"]
    return declared.removeprefix(">=").removesuffix("-0")


@pytest.fixture
def cluster(tmp_path: Path, control_plane: ControlPlane) -> Iterator[Path]:
    """A new, empty real cluster (API server, controllers, a node); yields its kubeconfig.

    `control_plane` is asked for only to fail clearly outside the pod network.
    """
    with fresh_control_plane(tmp_path / "cluster") as plane:
        yield plane.kubeconfig


# -- the quickstart ----------------------------------------------------------------------------

#: Commands that cannot run here, and why. Anything else in the quickstart runs.
EXCUSED = (
    (re.compile(r"^(docker (build|push)|kind load)\b"),
     "needs a container engine (scripts/build_image.sh builds the image with buildah instead)"),
    (re.compile(r"^python3\.11 -m venv\b|/pip install\b"), "installs from the package registry"),
    (re.compile(r"^kubectl apply -f crds/$|^kubectl create namespace sealtrail$"),
     ("the kubectl-only install path: the quickstart's helm install ran on this cluster (the "
     "kubectl path's rendering is checked instead)")),
    (re.compile(r"\bport-forward\b|^kill %1$|^curl\b.*localhost"),
     "needs the kubelet's streaming API, which the tests' node does not serve"),
    (re.compile(r"^curl\b"), "needs Splunk"),
    (re.compile(r"\bexec\b.*sh -c 'cat > "), "copies a file through the kubelet's exec API"),
    (re.compile(r"\bexec\b.*sh -c 'curl\b"), "posts through the kubelet's exec API"),
)
RUNNABLE = re.compile(r"^(export |kubectl |helm (install|template|uninstall) |sealtrail |python3 )")
IN_POD = re.compile(r"^kubectl .*\bexec\b.* -- (sealtrail .*)$")


def quickstart_commands() -> list[str]:
    commands = []
    for block in blocks(QUICKSTART):
        if block.language == "sh":
            commands += shell_commands(block.text)
        elif block.language == "console":
            commands += [line[2:] for line in block.text.splitlines() if line.startswith("$ ")]
    return commands


def excuse(command: str) -> str | None:
    line = one_line(command)
    return next((why for pattern, why in EXCUSED if pattern.search(line)), None)


def quickstart_manifests() -> dict[str, str]:
    """The quickstart's `yaml` blocks by the file name on their first line."""
    found = {}
    for block in blocks(QUICKSTART):
        if block.language == "yaml":
            name = block.text.splitlines()[0].removeprefix("#").strip()
            found[name] = block.text
    return found


def quickstart_event() -> str:
    (post,) = [command for command in quickstart_commands() if "/v1/events" in command
               and "POST" in command]
    return post.split("\n")[-2]


def test_every_quickstart_command_runs_here_or_is_excused() -> None:
    commands = quickstart_commands()
    assert len(commands) > 20
    for command in commands:
        line = one_line(command)
        assert excuse(command) or RUNNABLE.match(line) or IN_POD.match(line), (
            f"classify this quickstart command in the test (run it or excuse it): {line}")
    kinds = {excuse(command) for command in commands}
    assert None in kinds  # most of them run


def test_the_quickstarts_event_is_valid() -> None:
    event = Event.model_validate_json(quickstart_event())
    assert event.tenant_id is None  # the doc says it goes to the default tenant, the namespace


def test_the_quickstarts_manifests_are_valid_objects() -> None:
    manifests = quickstart_manifests()
    assert set(manifests) == {"audit.yaml", "app.yaml"}
    (app,) = yaml.safe_load_all(manifests["app.yaml"])
    validate_objects([app], chart_kube_version(), "1.37.0")
    labels = app["spec"]["template"]["metadata"]["labels"]
    policy = next(doc for doc in yaml.safe_load_all(manifests["audit.yaml"])
                  if doc["kind"] == "AuditPolicy")
    assert policy["spec"]["selector"]["matchLabels"].items() <= labels.items()


def _workspace(tmp_path: Path) -> Path:
    """A directory that looks like a checkout, plus the quickstart's files."""
    work = tmp_path / "work"
    work.mkdir()
    for name in ("crds", "helm", "docker"):
        (work / name).symlink_to(ROOT / name)
    for name, text in quickstart_manifests().items():
        (work / name).write_text(text, encoding="utf-8")
    return work


def _siem_fixture(work: Path) -> None:
    """What Splunk would hold after the quickstart: the event and its checkpoint, signed."""
    sealtrail("append", "--db", "quickstart.db", "--tenant", "payments", "--checkpoint-key",
              "audit.key", "--checkpoint-every", "1", cwd=work, stdin=quickstart_event() + "\n")
    rows = sealtrail("dump", "--db", "quickstart.db", cwd=work).stdout
    (work / "siem-rows.ndjson").write_text(rows, encoding="utf-8")
    (work / "sealtrail_siem_check.py").write_text(siem_script(), encoding="utf-8")


def _run_quickstart_command(command: str, work: Path, env: dict[str, str],
                            exports: list[str]) -> subprocess.CompletedProcess[str]:
    line = one_line(command)
    in_pod = IN_POD.match(line)
    if in_pod:  # the worker's store and scratch directory are files here
        inner = in_pod.group(1).replace("/var/lib/sealtrail/audit.db", "quickstart.db")
        command = inner.replace("/tmp/", "")  # noqa: S108 - the pod's path, mapped to cwd
    if line.startswith("helm install "):  # installed for real, and rendered to be checked
        flags = re.sub(r"\s--(create-namespace|wait)\b", "", line.removeprefix("helm install "))
        command = f"{command}\nhelm template {flags} > rendered-install.yaml"
    if line.startswith("helm template ") and "| kubectl apply" in command:
        command = command.split("|")[0].rstrip().rstrip("\\") + " > rendered-template.yaml"
    if "sealtrail_siem_check.py" in line and not (work / "siem-rows.ndjson").exists():
        _siem_fixture(work)
    script = "\n".join([*exports, command])
    return run(["bash", "-euo", "pipefail", "-c", script], cwd=work, env=env, check=False)


def test_the_quickstart_runs_on_a_real_cluster(cluster: Path, tmp_path: Path) -> None:
    work = _workspace(tmp_path)
    env = tool_env(cluster, home=tmp_path)
    exports: list[str] = []
    outputs: dict[str, str] = {}
    for command in quickstart_commands():
        if excuse(command):
            continue
        done = _run_quickstart_command(command, work, env, exports)
        assert done.returncode == 0, f"{one_line(command)}\n{done.stderr}{done.stdout}"
        if one_line(command).startswith("export "):
            exports.append(command)
        outputs[one_line(command)] = done.stdout
    # Both install paths render the image the quickstart built, and valid objects.
    image = "registry.example.com/platform/sealtrail:0.1.0"
    for name, crds in (("rendered-install.yaml", True), ("rendered-template.yaml", False)):
        documents = [doc for doc in yaml.safe_load_all((work / name).read_text()) if doc]
        validate_objects(documents, "1.37.0")
        (deployment,) = [doc for doc in documents if doc["kind"] == "Deployment"]
        assert deployment["spec"]["template"]["spec"]["containers"][0]["image"] == image
        assert any(doc["kind"] == "CustomResourceDefinition" for doc in documents) == crds
    assert (work / "audit.key.pub").exists()
    assert "auditexport.sealtrail.dev/splunk created" in outputs["kubectl apply -f audit.yaml"]
    assert "deployment.apps/payments created" in outputs["kubectl apply -f app.yaml"]
    assert outputs["sealtrail --version"].strip() == "sealtrail 0.1.0"
    _compare_console_samples(outputs)


def _compare_console_samples(outputs: dict[str, str]) -> None:
    """Each console sample looks like what its command really printed (hashes masked)."""
    by_command = dict(outputs)
    for block in blocks(QUICKSTART):
        if block.language != "console":
            continue
        lines = block.text.strip().splitlines()
        if lines[0].startswith("$ "):
            command, sample = lines[0][2:], "\n".join(lines[1:])
        else:  # the output of the in-pod verify, run here on the store made from the event
            command = next(line for line in by_command if line.startswith("kubectl")
                           and "sealtrail verify" in line)
            sample = block.text
        real = by_command[command]
        if "get aex,apol" in command:  # ages and the moment differ: the headers and names
            names = {line.split()[0] for line in sample.splitlines() if "/" in line}
            assert names <= {line.split()[0] for line in real.splitlines() if line.strip()}
            headers = {tuple(line.split()) for line in sample.splitlines() if "NAME" in line}
            assert headers <= {tuple(line.split()) for line in real.splitlines()}
        else:
            assert masked(real) == masked(sample), f"{command}\n{real}"


# -- the SIEM-side script ----------------------------------------------------------------------


def siem_script() -> str:
    (block,) = [block for block in blocks(SIEM_DOC)
                if block.before == "<!-- script:sealtrail_siem_check.py -->"]
    assert block.language == "python"
    return block.text


@dataclass
class Stores:
    """Two workers' stores of one tenant, their rows, a key, and the script beside them."""

    work: Path
    a: list[str]
    b: list[str]

    def check(self, rows: list[str], *args: str) -> subprocess.CompletedProcess[str]:
        (self.work / "rows.ndjson").write_text("".join(rows), encoding="utf-8")
        return run([sys.executable, "sealtrail_siem_check.py", *args, "rows.ndjson"],
                   cwd=self.work, check=False)


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> Stores:
    work = tmp_path_factory.mktemp("siem")
    (work / "sealtrail_siem_check.py").write_text(siem_script(), encoding="utf-8")
    sealtrail("keygen", "--out", "k.key", cwd=work)
    sealtrail("keygen", "--out", "other.key", cwd=work)
    events = "".join(orjson.dumps({
        "event_type": "payment.refund", "severity": "HIGH", "reason": f'r{n} évil\n"q"',
        "risk_tags": ["b", "a"], "extra": {"z": "1", "a": "x"}}).decode() + "\n"
        for n in range(3))
    dumps = []
    for name in ("a", "b"):
        sealtrail("append", "--db", f"{name}.db", "--tenant", "payments", "--checkpoint-key",
                  "k.key", "--checkpoint-every", "2", cwd=work, stdin=events)
        dumps.append(sealtrail("dump", "--db", f"{name}.db", cwd=work).stdout)
    return Stores(work, *(dump.splitlines(keepends=True) for dump in dumps))


def test_the_script_separates_two_workers_chains(stores: Stores) -> None:
    done = stores.check(stores.a + stores.b + stores.a[:2], "--pubkey", "k.key.pub")
    assert done.returncode == 0, done.stdout
    assert done.stdout.splitlines()[-1] == "intact: 8 rows, 2 chain(s), 2 signed checkpoint(s)"
    (sample,) = [block for block in blocks(SIEM_DOC) if block.language == "console"]
    assert masked(done.stdout) == masked("\n".join(sample.text.splitlines()[1:]))


@pytest.mark.parametrize(("case", "problem"), [
    ("changed", "does not match its record_hash"),
    ("removed", "is not in the export"),
    ("forged", "signature does not verify"),
    ("inserted", "rows claim to follow it"),
])
def test_the_script_finds_each_kind_of_damage(stores: Stores, case: str, problem: str) -> None:
    rows, args = list(stores.a), ["--pubkey", "k.key.pub"]
    if case == "changed":
        rows[1] = rows[1].replace("r1", "r9")
    elif case == "removed":
        del rows[1]
    elif case == "forged":
        args = ["--pubkey", "other.key.pub"]
    else:  # a second row claiming to follow row 1, with a hash of its own
        row = orjson.loads(rows[1])
        row.pop("record_hash")
        row["reason"] = "inserted"
        digest = hashlib.sha256(orjson.dumps(row, option=orjson.OPT_SORT_KEYS)).hexdigest()
        rows.append(orjson.dumps({**row, "record_hash": digest}, option=orjson.OPT_SORT_KEYS)
                    .decode() + "\n")
    done = stores.check(rows, *args)
    assert done.returncode == 1, done.stdout
    assert problem in done.stdout
    assert "NOT intact" in done.stdout.splitlines()[-1]


def test_the_script_takes_a_time_window_with_partial(stores: Stores) -> None:
    assert stores.check(stores.a[2:], "--pubkey", "k.key.pub").returncode == 1
    done = stores.check(stores.a[2:], "--pubkey", "k.key.pub", "--partial")
    assert done.returncode == 0, done.stdout
    assert "chain from tenant_seq 3 to 4" in done.stdout


def test_saved_chains_and_the_whole_export_feed_sealtrail_verify(stores: Stores) -> None:
    done = stores.check(stores.b + stores.a, "--save-chains", "chains")
    assert done.returncode == 0, done.stdout
    assert "signatures NOT checked" in done.stdout
    first = orjson.loads(stores.a[0])
    own = (stores.work / "chains"
           / f"payments-{first['store_id']}-{first['record_hash'][:12]}.ndjson")
    assert own.read_text(encoding="utf-8") == "".join(stores.a)  # byte for byte the store's
    (other,) = set((stores.work / "chains").iterdir()) - {own}
    (stores.work / "all.ndjson").write_text("".join(stores.b + stores.a), encoding="utf-8")
    verdicts = {path.name: sealtrail("verify", "--db", "a.db", "--checkpoints", str(path),
                                     "--pubkey", "k.key.pub", "--processes", "1",
                                     cwd=stores.work, check=False).returncode
                for path in (own, other, stores.work / "all.ndjson")}
    # Its own chain, or the whole export (it picks its own store's checkpoints): intact. Only
    # another store's chain: no evidence about this store, which is reported, not passed.
    assert verdicts == {own.name: 0, other.name: 2, "all.ndjson": 0}


def test_the_spl_hash_recipe_cuts_exactly_the_record_hash_member(stores: Stores) -> None:
    """The page's `replace(_raw, ...)` then `sha256()`, done as SPL would do it."""
    recipe = next(line for line in SIEM_DOC.read_text(encoding="utf-8").splitlines()
                  if line.startswith("| eval body=replace(_raw"))
    found = re.search(r'replace\(_raw, "(.*)", ""\)', recipe)
    assert found
    pattern = found.group(1).replace('\\"', '"')
    for line in stores.a + stores.b:
        body = re.sub(pattern, "", line.rstrip("\n"))
        digest = hashlib.sha256(body.encode()).hexdigest()
        assert digest == orjson.loads(line)["record_hash"]


# -- the GitOps example ------------------------------------------------------------------------

EXPECTED_GITOPS = {
    "argocd/applications.yaml": [("argoproj.io/v1alpha1", "Application")] * 2,
    "flux/gitrepository.yaml": [("source.toolkit.fluxcd.io/v1", "GitRepository")],
    "flux/kustomizations.yaml": [("kustomize.toolkit.fluxcd.io/v1", "Kustomization")] * 2,
    "flux/operator/helmrelease.yaml": [("helm.toolkit.fluxcd.io/v2", "HelmRelease")],
    "audit/kustomization.yaml": [("kustomize.config.k8s.io/v1beta1", "Kustomization")],
    "audit/auditexport.yaml": [("sealtrail.dev/v1alpha1", "AuditExport")],
    "audit/auditpolicy.yaml": [("sealtrail.dev/v1alpha1", "AuditPolicy")],
}


def gitops(name: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all((GITOPS / name).read_text()) if doc]


def repo_path(path: str) -> Path:
    found = ROOT / path.removeprefix("./")
    assert found.exists(), f"{path} does not exist in the repository"
    return found


def test_gitops_files_have_the_right_kinds() -> None:
    files = {str(path.relative_to(GITOPS)) for path in GITOPS.rglob("*.yaml")}
    assert files == set(EXPECTED_GITOPS)
    for name, expected in EXPECTED_GITOPS.items():
        assert [(doc["apiVersion"], doc["kind"]) for doc in gitops(name)] == expected, name
    # The operator's e2e test applies every top-level YAML file of each example folder.
    assert not list(GITOPS.glob("*.yaml"))


def _renders(values: dict[str, Any], tmp_path: Path) -> None:
    values_file = tmp_path / "values.yaml"
    values_file.write_text(yaml.safe_dump(values), encoding="utf-8")
    documents = helm_template("sealtrail", str(CHART), "-n", "sealtrail", "-f", str(values_file))
    validate_objects([doc for doc in documents if doc["kind"] == "Deployment"], "1.37.0")
    (deployment,) = [doc for doc in documents if doc["kind"] == "Deployment"]
    image = deployment["spec"]["template"]["spec"]["containers"][0]["image"]
    assert image == f"{values['image']['repository']}:{values['image']['tag']}"


def test_argocd_applications_install_the_chart_then_the_teams_resources(tmp_path: Path) -> None:
    operator, audit = gitops("argocd/applications.yaml")
    wave = {app["metadata"]["name"]: int(app["metadata"]["annotations"][
        "argocd.argoproj.io/sync-wave"]) for app in (operator, audit)}
    assert wave[operator["metadata"]["name"]] < wave[audit["metadata"]["name"]]
    for app in (operator, audit):
        assert app["spec"]["source"]["repoURL"] == PLACEHOLDER_REPO
        assert "ServerSideApply=true" in app["spec"]["syncPolicy"]["syncOptions"]
    assert (repo_path(operator["spec"]["source"]["path"]) / "Chart.yaml").exists()
    assert operator["spec"]["source"]["path"] == "helm/sealtrail"
    _renders(operator["spec"]["source"]["helm"]["valuesObject"], tmp_path)
    assert (repo_path(audit["spec"]["source"]["path"]) / "kustomization.yaml").exists()
    (ignored,) = operator["spec"]["ignoreDifferences"]
    assert ignored["kind"] == "MutatingWebhookConfiguration"
    assert "caBundle" in ignored["jqPathExpressions"][0]
    assert "RespectIgnoreDifferences=true" in operator["spec"]["syncPolicy"]["syncOptions"]


def test_flux_orders_the_resources_after_the_helm_release(tmp_path: Path) -> None:
    (source,) = gitops("flux/gitrepository.yaml")
    assert source["spec"]["url"] == PLACEHOLDER_REPO
    operator, audit = gitops("flux/kustomizations.yaml")
    for kustomization in (operator, audit):
        assert kustomization["spec"]["sourceRef"] == {"kind": "GitRepository",
                                                      "name": source["metadata"]["name"]}
        repo_path(kustomization["spec"]["path"])
    # dependsOn names Kustomizations only: the one that waits for the HelmRelease.
    assert audit["spec"]["dependsOn"] == [{"name": operator["metadata"]["name"]}]
    assert operator["spec"]["wait"] is True
    released = repo_path(operator["spec"]["path"]) / "helmrelease.yaml"
    assert released == GITOPS / "flux/operator/helmrelease.yaml"
    (release,) = gitops("flux/operator/helmrelease.yaml")
    chart = release["spec"]["chart"]["spec"]
    assert chart["sourceRef"]["name"] == source["metadata"]["name"]
    assert (repo_path(chart["chart"]) / "Chart.yaml").exists()
    _renders(release["spec"]["values"], tmp_path)
    ignored = pathspec.GitIgnoreSpec.from_lines(source["spec"]["ignore"].splitlines())
    needed = [f"{chart['chart'].removeprefix('./')}/Chart.yaml",
              f"{chart['chart'].removeprefix('./')}/templates/deployment.yaml",
              *(f"{k['spec']['path'].removeprefix('./')}/{name}"
                for k in (operator, audit) for name in ("helmrelease.yaml", "kustomization.yaml")
                if (ROOT / k["spec"]["path"] / name).exists())]
    assert len(needed) == 4
    assert not [path for path in needed if ignored.match_file(path)]
    assert ignored.match_file("tests/test_cli.py")
    assert ignored.match_file("examples/01-splunk/secret.yaml")


def test_the_teams_kustomization_applies_against_the_crds(
        sealtrail_release: ControlPlane) -> None:
    env = tool_env(sealtrail_release.kubeconfig)
    built = run([str(TOOLS / "kubectl"), "kustomize", str(GITOPS / "audit")], env=env).stdout
    kinds = sorted(doc["kind"] for doc in yaml.safe_load_all(built) if doc)
    assert kinds == ["AuditExport", "AuditPolicy"]
    run([str(TOOLS / "kubectl"), "create", "namespace", "team-gitops"], env=env)
    applied = run([str(TOOLS / "kubectl"), "apply", "-n", "team-gitops", "-f", "-"], env=env,
                  stdin=built)
    assert "auditexport.sealtrail.dev/splunk created" in applied.stdout


# -- the image ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Instruction:
    keyword: str
    arguments: str


def dockerfile() -> list[Instruction]:
    """The Dockerfile's instructions, continuation lines joined, comments dropped."""
    instructions, pending = [], ""
    for line in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        if line.lstrip().startswith("#") or not line.strip():
            continue
        pending += line.rstrip().removesuffix("\\") + " "
        if not line.rstrip().endswith("\\"):
            keyword, _, arguments = pending.strip().partition(" ")
            instructions.append(Instruction(keyword.upper(), " ".join(arguments.split())))
            pending = ""
    return instructions


def final_stage() -> list[Instruction]:
    instructions = dockerfile()
    last_from = max(i for i, item in enumerate(instructions) if item.keyword == "FROM")
    return instructions[last_from:]


def base_image() -> str:
    (arg,) = [item for item in dockerfile() if item.keyword == "ARG"
              and item.arguments.startswith("PYTHON_IMAGE=")]
    return arg.arguments.removeprefix("PYTHON_IMAGE=")


def test_the_base_image_is_pinned_to_the_venvs_python() -> None:
    image = base_image()
    match = re.fullmatch(r"python:(3\.(\d+)\.\d+)-slim-bookworm", image)
    assert match, image
    assert int(match.group(2)) == sys.version_info.minor
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    assert match.group(1) in SpecifierSet(requires)
    froms = [item.arguments.split()[0] for item in dockerfile() if item.keyword == "FROM"]
    assert froms == ["${PYTHON_IMAGE}", "${PYTHON_IMAGE}"]  # one interpreter path for the venv
    text = DOCKERFILE.read_text(encoding="utf-8")
    assert "latest" not in text
    assert f"{image}@sha256:" in text  # how to pin the digest, spelled out
    assert "digest" in text


def test_the_image_runs_as_65532_without_writing_bytecode() -> None:
    stage = final_stage()
    (user,) = [item for item in stage if item.keyword == "USER"]
    assert user.arguments.split(":")[0] == "65532"
    assert not [item for item in dockerfile() if item.keyword == "ADD"]
    env = " ".join(item.arguments for item in stage if item.keyword == "ENV")
    assert "PYTHONDONTWRITEBYTECODE=1" in env
    assert ("HEALTHCHECK", "NONE") in {(item.keyword, item.arguments) for item in stage}
    assert "--invalidation-mode unchecked-hash" in DOCKERFILE.read_text(encoding="utf-8")
    labels = " ".join(item.arguments for item in stage if item.keyword == "LABEL")
    assert "org.opencontainers.image.title" in labels
    assert "org.opencontainers.image.version" in labels


def test_the_entrypoint_is_the_sealtrail_command(tmp_path: Path) -> None:
    stage = final_stage()
    (entrypoint,) = [item for item in stage if item.keyword == "ENTRYPOINT"]
    (command,) = [item for item in stage if item.keyword == "CMD"]
    assert orjson.loads(entrypoint.arguments) == ["sealtrail"]
    assert orjson.loads(command.arguments) == ["operator"]
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts == {"sealtrail": "sealtrail.cli:main"}
    sealtrail("operator", "--help", cwd=tmp_path)  # the default command exists


def lock() -> dict[str, str]:
    return {canonicalize_name(name): version for name, _, version in (
        line.strip().partition("==") for line in (ROOT / "requirements.lock").read_text()
        .splitlines() if "==" in line)}


def runtime_requirements() -> dict[str, str]:
    found = {}
    for line in RUNTIME_REQUIREMENTS.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, equals, version = line.strip().partition("==")
            assert equals, f"not pinned exactly: {line}"
            assert version, f"not pinned exactly: {line}"
            found[canonicalize_name(name)] = version
    return found


def runtime_closure() -> set[str]:
    """The dependencies in pyproject.toml and what they need, from the installed packages' metadata."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pending = [Requirement(spec) for spec in project["dependencies"]]
    seen: set[str] = set()
    while pending:
        requirement = pending.pop()
        name = canonicalize_name(requirement.name)
        if name in seen:
            continue
        seen.add(name)
        for spec in importlib.metadata.distribution(name).requires or []:
            needed = Requirement(spec)
            if needed.marker is None or needed.marker.evaluate({"extra": ""}):
                pending.append(needed)
    return seen


def test_runtime_requirements_are_the_closure_at_the_locks_versions() -> None:
    runtime, locked = runtime_requirements(), lock()
    assert set(runtime) == runtime_closure()
    differ = {name: (version, locked.get(name)) for name, version in runtime.items()
              if locked.get(name) != version}
    assert not differ, f"runtime version != requirements.lock: {differ}"
    setuptools = re.search(r"setuptools==(\S+)", DOCKERFILE.read_text())
    assert setuptools
    assert setuptools.group(1) == locked["setuptools"]


def third_party_imports() -> set[str]:
    """Top-level names the package imports (anywhere, functions included) from outside."""
    modules: set[str] = set()
    for path in (ROOT / "operator" / "sealtrail").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                modules |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules.add(node.module.split(".")[0])
    return {name for name in modules if name not in sys.stdlib_module_names
            and name not in ("sealtrail", "__future__")}


def test_every_third_party_import_is_a_runtime_requirement() -> None:
    imports = third_party_imports()
    assert {"pydantic", "kopf", "httpx", "aiohttp", "yaml", "nats", "botocore"} <= imports
    distributions = importlib.metadata.packages_distributions()
    runtime = runtime_requirements()
    missing = {name: distributions.get(name) for name in imports
               if not any(canonicalize_name(dist) in runtime
                          for dist in distributions.get(name, []))}
    assert not missing, f"imported but not in docker/requirements-runtime.txt: {missing}"


def _glibc(tag: str) -> tuple[int, int] | None:
    legacy = {"manylinux1": (2, 5), "manylinux2010": (2, 12), "manylinux2014": (2, 17)}
    platform = tag.rsplit("-", 1)[-1]
    if platform == "any":
        return (0, 0)
    for name, version in legacy.items():
        if platform.startswith(name + "_"):
            return version
    match = re.match(r"manylinux_(\d+)_(\d+)_", platform)
    return (int(match.group(1)), int(match.group(2))) if match else None


def test_every_runtime_wheel_runs_on_bookworm() -> None:
    """--only-binary needs a wheel for each; bookworm's glibc is 2.36."""
    for name in runtime_requirements():
        wheel = importlib.metadata.distribution(name).read_text("WHEEL") or ""
        tags = email.parser.Parser().parsestr(wheel).get_all("Tag") or []
        needs = [_glibc(tag) for tag in tags]
        assert tags, f"{name}: no wheel tags"
        assert all(need is not None and need <= (2, 36) for need in needs), (name, tags)


def _glob_regex(pattern: str) -> re.Pattern[str]:
    """A .dockerignore pattern (Go's filepath.Match, plus `**`) as a regex."""
    out, index = "", 0
    while index < len(pattern):
        if pattern.startswith("**/", index):
            out, index = out + "(?:.*/)?", index + 3
        elif pattern.startswith("**", index):
            out, index = out + ".*", index + 2
        elif pattern[index] in "*?":
            out, index = out + ("[^/]*" if pattern[index] == "*" else "[^/]"), index + 1
        elif pattern[index] == "[":
            close = pattern.index("]", index)
            out, index = out + pattern[index:close + 1], close + 1
        else:
            out, index = out + re.escape(pattern[index]), index + 1
    return re.compile(out)


def _context_files() -> list[Path]:
    """The files `docker build .` would send, by .dockerignore's rules (last match wins)."""
    rules = [(_glob_regex(line.removeprefix("!").strip().strip("/")), line.startswith("!"))
             for line in (ROOT / ".dockerignore").read_text().splitlines()
             if line.strip() and not line.startswith("#")]

    def sent(relative: str) -> bool:
        parts = relative.split("/")
        prefixes = ["/".join(parts[:end]) for end in range(1, len(parts) + 1)]
        verdict = True
        for pattern, negated in rules:
            if any(pattern.fullmatch(prefix) for prefix in prefixes):
                verdict = negated
        return verdict

    found = []
    for folder, folders, files in os.walk(ROOT):
        folders[:] = [name for name in folders if not name.startswith(".")]  # .git, .venv, ...
        for name in files:
            relative = str((Path(folder) / name).relative_to(ROOT))
            if sent(relative):
                found.append(ROOT / relative)
    return found


def test_the_build_context_is_what_the_dockerfile_copies() -> None:
    sent = {str(path.relative_to(ROOT)) for path in _context_files()}
    sources = [word for item in dockerfile() if item.keyword == "COPY"
               and "--from=" not in item.arguments for word in item.arguments.split()[:-1]]
    assert sources
    for source in sources:
        assert any(name == source or name.startswith(source.rstrip("/") + "/") for name in sent)
    assert not [name for name in sent if name.startswith(("tests/", "docs/", "bench/"))
                or "__pycache__" in name or ".egg-info" in name or name.endswith(".db")]
    assert {"pyproject.toml", "README.md", "docker/requirements-runtime.txt",
            "operator/sealtrail/cli.py", "operator/sealtrail/py.typed"} <= sent


def test_the_context_builds_a_complete_wheel_with_the_locks_setuptools(tmp_path: Path) -> None:
    context = tmp_path / "context"
    for path in _context_files():
        target = context / path.relative_to(ROOT)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)
    assert importlib.metadata.version("setuptools") == lock()["setuptools"]
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
         "--wheel-dir", str(tmp_path / "wheels"), "."], cwd=context)
    (wheel,) = (tmp_path / "wheels").glob("sealtrail-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        entry_points = next(archive.read(name).decode() for name in names
                            if name.endswith("entry_points.txt"))
    package = ROOT / "operator"
    expected = {str(path.relative_to(package)) for path in (package / "sealtrail").rglob("*")
                if path.is_file() and "__pycache__" not in path.parts}
    assert expected <= names
    assert "sealtrail = sealtrail.cli:main" in entry_points


def test_the_runtime_packages_alone_import_every_module(tmp_path: Path) -> None:
    """Only the runtime distributions and the package on the path: no test or dev package."""
    site = tmp_path / "site"
    site.mkdir()
    for name in runtime_requirements():
        distribution = importlib.metadata.distribution(name)
        tops = {Path(str(file)).parts[0] for file in distribution.files or []}
        for top in tops - {"..", "bin"}:
            source = Path(str(distribution.locate_file(top)))
            if source.exists() and not (site / top).exists():
                (site / top).symlink_to(source)
    (site / "sealtrail").symlink_to(ROOT / "operator" / "sealtrail")
    probe = (
        "import sys, pkgutil, importlib\n"
        f"sys.path.insert(0, {str(site)!r})\n"
        "import sealtrail\n"
        f"assert sealtrail.__file__.startswith({str(site)!r}), sealtrail.__file__\n"
        "names = [m.name for m in pkgutil.walk_packages(sealtrail.__path__, 'sealtrail.')\n"
        "         if m.name != 'sealtrail.__main__']\n"
        "for name in names:\n"
        "    importlib.import_module(name)\n"
        "print(len(names))\n"
    )
    done = run([sys.executable, "-I", "-S", "-c", probe], cwd=tmp_path)
    assert int(done.stdout) > 50


# -- links and anchors -------------------------------------------------------------------------

LINKED_PAGES = [*sorted(DOCS.glob("*.md")), GITOPS / "README.md"]


@pytest.mark.parametrize("page", LINKED_PAGES, ids=lambda page: page.name)
def test_relative_links_point_at_files_and_anchors_that_exist(page: Path) -> None:
    broken = []
    for line in prose(page):
        for target in re.findall(r"\[[^\]]*\]\(([^)\s]+)\)", line):
            if re.match(r"^[a-z]+:", target):
                continue
            path_part, _, anchor = target.partition("#")
            linked = (page.parent / path_part).resolve() if path_part else page
            missing_anchor = (linked.is_file() and linked.suffix == ".md" and bool(anchor)
                              and anchor not in anchors(linked))
            if not linked.exists() or missing_anchor:
                broken.append(target)
    assert not broken, f"{page.name}: {broken}"


def test_operations_has_the_anchors_the_alerts_link_to() -> None:
    names = anchors(OPERATIONS)
    assert {"back-pressure", "paused-exports", "cursor-lag", "worker-unreachable",
            "non-retryable-failures", "interval-at-maximum", "failure-modes",
            "the-datas-life-in-a-pod", "store-near-its-limit", "rotation", "upgrading"} <= names


def test_the_failure_table_covers_each_failure_mode() -> None:
    text = OPERATIONS.read_text(encoding="utf-8").split("## Failure modes", 1)[1]
    rows = [line for line in text.splitlines()
            if line.startswith("| ") and not line.startswith("| symptom")]
    for needle in ("SIEM is down", "wrong, revoked", "index does not exist",
                   "larger than the receiver", "clock", "volume is full", "uninjectedPods", "failurePolicy: Fail",
                   "Ignore", "admin port", "config change refused", "TLS verification"):
        assert any(needle in row for row in rows), needle


def test_siem_verification_names_the_fields_as_shipped() -> None:
    text = SIEM_DOC.read_text(encoding="utf-8")
    for needle in ('"fields": {"dedupe_key"', "`_source` is the row", "`_id` is its hash",
                   '"message": <the row as a string>', "`@record_hash`", "sha256(",
                   "streamstats", "MV_EXPAND"):
        assert needle in text, needle


@pytest.mark.parametrize("page", [QUICKSTART, SIEM_DOC, OPERATIONS], ids=lambda page: page.name)
def test_json_and_yaml_samples_parse(page: Path) -> None:
    for block in blocks(page):
        if block.language == "json":
            orjson.loads(block.text)
        elif block.language == "yaml":
            assert list(yaml.safe_load_all(block.text))
