"""The request mix of the load generator: who asks for lists, which events are posted, with what key."""

from __future__ import annotations

import collections
import dataclasses
import random
import urllib.parse
import uuid

import msgspec

API_KEY = "bench-events-key"
GET, POST = 0, 1
KINDS = ("get_recommendations", "post_event")


class ServedItem(msgspec.Struct):
    item_id: str


class Served(msgspec.Struct):
    recommendation_id: str
    user_id: str
    items: list[ServedItem]


SERVED = msgspec.json.Decoder(Served)
ENCODER = msgspec.json.Encoder()


@dataclasses.dataclass
class Workload:
    """The request mix: who asks for lists, which events are posted, with what key."""

    user_ids: list[str]
    item_ids: list[str]
    api_key: str = API_KEY
    event_share: float = 0.1
    unknown_share: float = 0.05
    unknown_users: int = 500
    answer_share: float = 0.5
    k: int = 10
    seed: int = 0
    tag: str = dataclasses.field(default_factory=lambda: uuid.uuid4().hex[:8])

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self.served: collections.deque[Served] = collections.deque(maxlen=1000)
        self.n_events = 0

    def user(self) -> str:
        if self.rng.random() < self.unknown_share:
            return f"bench-new-{self.rng.randrange(self.unknown_users)}"
        return self.rng.choice(self.user_ids)

    def next_request(self) -> tuple[int, str, bytes | None, str | None]:
        """(kind, path, body, user of a list) of the next request."""
        if self.rng.random() >= self.event_share:
            user = self.user()
            return GET, f"/v1/users/{urllib.parse.quote(user, safe='')}/recommendations?k={self.k}", None, user
        self.n_events += 1
        event = {"event_type": "click", "event_id": f"bench-{self.tag}-{self.n_events}"}
        if self.served and self.rng.random() < self.answer_share:
            shown = self.rng.choice(self.served)
            event |= {"user_id": shown.user_id, "recommendation_id": shown.recommendation_id}
            event["item_id"] = self.rng.choice(shown.items).item_id if shown.items else self.rng.choice(self.item_ids)
        else:
            event |= {"user_id": self.user(), "item_id": self.rng.choice(self.item_ids)}
        return POST, "/v1/events", ENCODER.encode(event), None

    def note_served(self, body: bytes) -> None:
        """Keep a served list for later events to answer; raises on a body that is not a list."""
        self.served.append(SERVED.decode(body))

    def event_batch(self, n: int, prefix: str) -> bytes:
        """A batch of `n` view/click events with ids `<prefix>-<i>`."""
        rng = self.rng
        return ENCODER.encode(
            [
                {
                    "user_id": rng.choice(self.user_ids),
                    "item_id": rng.choice(self.item_ids),
                    "event_type": "click" if rng.random() < 0.3 else "view",
                    "event_id": f"{prefix}-{i}",
                }
                for i in range(n)
            ]
        )
