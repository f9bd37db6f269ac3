"""Smoke test of a deployed API: `python infra/smoke.py <base URL> [--user ID] [--ready-timeout S]`.

Passes when `/health` answers, `/ready` answers 200 within the timeout (a champion is loaded) and one
user's recommendations come back as a non-empty list. Standard library only, so it runs on a CI
runner without the project installed. Exit status 0 on success, 1 with the reason otherwise.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.error
import urllib.parse
import urllib.request


class SmokeFailure(Exception):
    pass


def get(url: str, timeout: float = 10.0) -> tuple[int, dict]:
    """Status and JSON body of a GET (an HTTP error is an answer too; no answer raises SmokeFailure)."""
    req = urllib.request.Request(url, headers={"Accept": "application/json", "User-Agent": "recsys-smoke"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            status, body = resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        status, body = exc.code, exc.read()
    except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
        raise SmokeFailure(f"{url}: no answer ({getattr(exc, 'reason', exc)})") from exc
    try:
        return status, json.loads(body or b"{}")
    except json.JSONDecodeError:
        return status, {"raw": body[:200].decode("utf-8", "replace")}


def smoke(base: str, user: str, ready_timeout: float, log=print) -> dict:
    """Run the three checks against `base`; returns the recommendation answer."""
    base = base.rstrip("/")
    status, body = get(f"{base}/health")
    if status != 200 or body.get("status") != "ok":
        raise SmokeFailure(f"/health answered {status} {body}")
    log(f"/health: {body}")

    deadline = time.monotonic() + ready_timeout
    while True:
        status, body = get(f"{base}/ready")
        if status == 200:
            break
        if time.monotonic() > deadline:
            raise SmokeFailure(f"/ready still {status} after {ready_timeout:.0f}s: {body} (is a champion published?)")
        time.sleep(5)
    log(f"/ready: {body}")

    url = f"{base}/v1/users/{urllib.parse.quote(user, safe='')}/recommendations?k=5"
    status, body = get(url)
    items = body.get("items") or []
    if status != 200 or not items or not all("item_id" in it for it in items):
        raise SmokeFailure(f"recommendations for {user!r} answered {status} {body}")
    log(f"recommendations for {user!r}: {[it['item_id'] for it in items]} (model {body.get('model_version')})")
    return body


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("base_url")
    parser.add_argument("--user", default="1", help="user id to ask recommendations for (unknown ids get cold start)")
    parser.add_argument("--ready-timeout", type=float, default=300.0, help="seconds to wait for /ready")
    args = parser.parse_args(argv)
    try:
        smoke(args.base_url, args.user, args.ready_timeout)
    except SmokeFailure as exc:
        print(f"smoke test failed: {exc}", file=sys.stderr)
        return 1
    print("smoke test passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
