"""How a simulated user reacts to a served list: from their real behaviour in the held-out window.

The rules (pure functions, no I/O):

* **Click.** A served item is clicked when the user really interacts with it in the window at the
  visit's moment or later, and that real interaction has not been used yet: each real item answers
  at most one list. The click is posted as a `click` event with the list's `recommendation_id`.
* **What follows a click.** The user's real events on that item from the visit's moment on are
  *brought forward*: the click stands for their real `view`/`click` events, and every other real
  event on it (`favorite`, `add_to_cart`, `purchase`, `rating` with its value) is posted right after
  the click with the same `recommendation_id`. Those real events are not posted again later, so
  the live state and the log hold each real interaction once.
* **Conversion** is what attribution counts (`recsys_assets.contract.attribution`): a `purchase`, or a
  `rating` of 4 or more (MovieLens). Data whose only event types are `view`/`click` has no real
  conversions to bring forward: after a click, an `add_to_cart` and a `purchase` are drawn with the
  rates of the Taobao sample's funnel (`TAOBAO_FUNNEL`), from a generator seeded by run seed, user
  and item, so the draw does not depend on the order in which concurrent visits run.
* **Organic events.** The visit's own real events whose item was not brought forward by a click are
  posted as they are, without a `recommendation_id` (they did not come from a list).
"""

from __future__ import annotations

import bisect
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import pandas as pd

# Attribution's definitions (recsys_assets.contract.attribution); repeated as plain values so that deciding
# a reaction needs nothing but the standard library.
CLICK = "click"
PURCHASE = "purchase"
RATING = "rating"
CONVERTING_RATING = 4.0
# Real event types a click stands for; every other type is brought forward after the click.
BROWSING = frozenset({"view", "click"})

Feedback = Literal["real", "funnel"]
Kind = Literal["click", "follow", "organic"]


@dataclass(frozen=True)
class RealEvent:
    """One real event of the held-out window (timestamps in unix seconds)."""

    user_id: str
    item_id: str
    event_type: str
    ts: float
    value: float | None = None


@dataclass(frozen=True)
class Post:
    """An event the simulator posts: a click on a served item, a real event it brings forward, or an
    organic real event."""

    item_id: str
    event_type: str
    value: float | None
    recommendation_id: str | None
    kind: Kind
    # the real moment of the event (clicks: the visit's), for `timestamps="real"`
    ts: float

    @property
    def converts(self) -> bool:
        return self.event_type == PURCHASE or (
            self.event_type == RATING and self.value is not None and self.value >= CONVERTING_RATING
        )


@dataclass(frozen=True)
class Funnel:
    """What happens after a click in data without event types: pv → cart → buy, per (user, item)."""

    cart: float  # P(add to cart | viewed)
    buy_after_cart: float  # P(buy | viewed, added to cart)
    buy_without_cart: float  # P(buy | viewed, not added to cart)


# Measured on the Taobao sample (`funnel_from_events` over its cleaned events; a test recomputes it):
# of the (user, item) pairs with a view, 3.70% were added to the cart; of those, 10.06% bought;
# of the viewed pairs not carted, 1.60% bought.
TAOBAO_FUNNEL = Funnel(cart=0.0370, buy_after_cart=0.1006, buy_without_cart=0.0160)


def funnel_from_events(events: pd.DataFrame) -> Funnel:
    """The view → add_to_cart → purchase rates of a typed event log, per (user, item) pair."""
    pairs = events.groupby(["user_id", "item_id"])["event_type"].agg(frozenset)
    viewed = pairs.map(lambda s: "view" in s)
    carted = pairs.map(lambda s: "add_to_cart" in s)
    bought = pairs.map(lambda s: PURCHASE in s)

    def share(part: pd.Series, whole: pd.Series) -> float:
        return float((part & whole).sum() / whole.sum()) if whole.sum() else 0.0

    return Funnel(
        cart=share(carted, viewed),
        buy_after_cart=share(bought, viewed & carted),
        buy_without_cart=share(bought, viewed & ~carted),
    )


def feedback_mode(event_types: Iterable[str]) -> Feedback:
    """`real` when the data has event types beyond browsing (they are brought forward), else `funnel`."""
    return "real" if set(event_types) - BROWSING else "funnel"


@dataclass
class UserFuture:
    """One user's real events in the replayed window, in time order; a click uses up an item."""

    events: list[RealEvent]
    used: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.events = sorted(self.events, key=lambda e: e.ts)
        self._ts = [e.ts for e in self.events]

    def ahead(self, since: float) -> dict[str, list[RealEvent]]:
        """Real events at `since` or later, by item (every item, used or not)."""
        out: dict[str, list[RealEvent]] = {}
        for ev in self.events[bisect.bisect_left(self._ts, since) :]:
            out.setdefault(ev.item_id, []).append(ev)
        return out

    def clickable(self, since: float) -> dict[str, list[RealEvent]]:
        """Real events at `since` or later, by item, of the items no click has used yet."""
        return {item: evs for item, evs in self.ahead(since).items() if item not in self.used}


def _rng(seed: int, user_id: str, item_id: str) -> random.Random:
    # a string seed is hashed (SHA-512) by `random`: the same draw on every run and every machine
    return random.Random(f"{seed}\x1f{user_id}\x1f{item_id}")


def _funnel_follow(funnel: Funnel, rng: random.Random) -> list[str]:
    carted = rng.random() < funnel.cart
    bought = rng.random() < (funnel.buy_after_cart if carted else funnel.buy_without_cart)
    return ["add_to_cart"] * carted + [PURCHASE] * bought


def react(
    visit: Sequence[RealEvent],
    served: Sequence[str],
    recommendation_id: str,
    future: UserFuture,
    mode: Feedback,
    funnel: Funnel = TAOBAO_FUNNEL,
    seed: int = 0,
) -> list[Post]:
    """The events a user posts after being served `served` at the start of `visit` (see the module
    docstring); marks the clicked items used in `future`."""
    if not visit:
        return []
    start = visit[0].ts
    user = visit[0].user_id
    clickable = future.clickable(start)
    posts: list[Post] = []
    for item in dict.fromkeys(served):
        real = clickable.get(item)
        if real is None:
            continue
        posts.append(Post(item, CLICK, None, recommendation_id, "click", start))
        if mode == "real":
            posts += [
                Post(item, ev.event_type, ev.value, recommendation_id, "follow", ev.ts)
                for ev in real
                if ev.event_type not in BROWSING
            ]
        else:
            posts += [
                Post(item, t, None, recommendation_id, "follow", start)
                for t in _funnel_follow(funnel, _rng(seed, user, item))
            ]
        future.used.add(item)
    # the visit's real events, unless a click (now or earlier) already brought them forward
    posts += [
        Post(ev.item_id, ev.event_type, ev.value, None, "organic", ev.ts)
        for ev in visit
        if ev.item_id not in future.used
    ]
    return posts


def hit(served: Sequence[str], ahead: Mapping[str, object]) -> bool:
    """A served list hits when one of its items is among the user's real items from now on."""
    return any(item in ahead for item in served)
