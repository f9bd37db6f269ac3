"""The fast test for a key written twice in an events body never lets one through the exact check would catch."""

import json
import random

import pytest

from serving.bodies import _DECODER, _check_duplicate_keys, _may_repeat_a_key
from serving.errors import InvalidEventError

FIELDS = {
    "user_id": lambda r: f"u{r.randrange(50)}",
    "item_id": lambda r: r.choice([str(r.randrange(9)), r.randrange(9)]),
    "event_type": lambda r: r.choice(["view", "click"]),
    "value": lambda r: r.choice([None, 1.5, 2]),
    "timestamp": lambda r: r.choice(["2026-01-01T00:00:00Z", 1_767_225_600]),
    "event_id": lambda r: f"e:{r.randrange(10**6)}",
}


def _object(r: random.Random) -> str:
    keys = ["user_id", "item_id", "event_type", *r.sample(["value", "timestamp", "event_id"], r.randrange(4))]
    if r.random() < 0.3:
        keys.insert(r.randrange(len(keys) + 1), r.choice(keys))  # a key twice
    r.shuffle(keys)
    colon = r.choice([":", ": ", " :", "\t:\n"])
    return "{" + ", ".join(f"{json.dumps(k)}{colon}{json.dumps(FIELDS[k](r))}" for k in keys) + "}"


def _repeats(body: bytes) -> bool:
    try:
        _check_duplicate_keys(body, batch=body.startswith(b"["))
    except InvalidEventError:
        return True
    return False


@pytest.mark.parametrize("seed", range(20))
def test_fast_check_flags_every_body_the_exact_check_refuses(seed: int) -> None:
    r = random.Random(seed)
    flagged = 0
    for _ in range(50):
        objects = [_object(r) for _ in range(r.randrange(1, 6))]
        body = (objects[0] if len(objects) == 1 and r.random() < 0.5 else "[" + ",".join(objects) + "]").encode()
        _DECODER.decode(body)  # a body that decodes into the type (the fast check's premise)
        exact = _repeats(body)
        assert _may_repeat_a_key(body) or not exact, body
        flagged += exact
    assert flagged  # the bodies did hold repeated keys


def test_a_clean_compact_body_skips_the_exact_check() -> None:
    body = json.dumps([{"user_id": f"u{i}", "item_id": i, "event_type": "view"} for i in range(100)]).encode()
    assert not _may_repeat_a_key(body.replace(b": ", b":"))
    assert not _may_repeat_a_key(body)
