"""Take the screenshots in docs/ui.md: the audit UI of a real worker, in Debian's Chromium.

    .venv/bin/python scripts/ui_screenshots.py [--out docs/ui]

Starts a worker (as the tests do: tests/worker_process.py) with a signing key, a paused export
and a few thousand sample events of three tenants, signs in with a token bound to no tenant,
and saves the sign-in page, the events page (timeline, list and an open event), the integrity
panel after a check, and the deliveries page. Loopback only; nothing is fetched.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
from playwright.sync_api import sync_playwright

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.worker_process import running_worker  # noqa: E402

from sealtrail.api.event import format_timestamp  # noqa: E402 - after the path is set
from sealtrail.chain.keys import generate_keypair  # noqa: E402
from sealtrail.demo import sample_events  # noqa: E402

TOKEN = "screenshots-token-1f7c9a"  # noqa: S105 - a throwaway token of a throwaway worker
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]


def main() -> int:
    """Start the worker, fill it, take the pictures."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "ui")
    parser.add_argument("--events", type=int, default=6000)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    directory = Path(tempfile.mkdtemp(prefix="ui-shots-"))
    generate_keypair(directory / "signing.key")
    (directory / "secret").write_text("whsec_c2NyZWVuc2hvdHM=\n", encoding="utf-8")
    config = {
        "ingest": {"tokens": [{"token": {"env": "SHOTS_TOKEN"}}]},
        "checkpoints": {"signingKey": {"file": str(directory / "signing.key")},
                        "everyRows": 500, "everySeconds": 3600},
        "exports": [{"name": "splunk-prod", "paused": True,
                     "webhook": {"url": "http://127.0.0.1:9/hook",
                                 "secret": {"file": str(directory / "secret")}}}],
    }
    now = datetime.now(UTC)
    events = list(sample_events(args.events, seed=3, tenants=("acme", "globex", "initech")))
    for number, event in enumerate(events):
        event["timestamp"] = format_timestamp(now - timedelta(hours=24) * (1 - number
                                                                         / len(events)))
    with running_worker(directory / "worker", env={"SHOTS_TOKEN": TOKEN}, **config) as worker:
        for start in range(0, len(events), 2000):
            httpx.post(f"{worker.url}/v1/events", json=events[start:start + 2000],
                       headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60,
                       ).raise_for_status()
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path="/usr/bin/chromium",
                                                 args=FLAGS)
            page = browser.new_page(base_url=worker.url, viewport={"width": 1440, "height": 1000})
            page.goto("/ui/signin")
            page.screenshot(path=args.out / "signin.png")
            page.fill("#token", TOKEN)
            page.keyboard.press("Enter")
            page.wait_for_url("**/ui/events")
            page.goto("/ui/events?decision=deny&range=24h")
            page.locator("#timeline svg").wait_for()
            page.screenshot(path=args.out / "events.png")
            page.locator("#rows a.open").nth(2).click()
            page.locator("#detail article").wait_for()
            page.locator("#browser-check.good").wait_for()
            page.screenshot(path=args.out / "detail.png")
            page.goto("/ui/integrity")
            page.click("button:has-text('Check all my tenants now')")
            page.locator(".verdict").first.wait_for()
            page.screenshot(path=args.out / "integrity.png")
            page.goto("/ui/deliveries")
            page.screenshot(path=args.out / "deliveries.png")
            browser.close()
    print(f"screenshots in {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
