"""Models trained without RecBole: popularity, content-based, and the hybrid that blends them with the
best collaborative model. Each one scores through `recsys_assets.contract.scoring`, so what is evaluated
offline is exactly what the API serves.

Content-based: Lops, de Gemmis, Semeraro, "Content-based Recommender Systems: State of the Art and
Trends" (Recommender Systems Handbook, 2011): TF-IDF item vectors, user profiles as event-weighted
sums of the items they touched, cosine similarity.
Hybrid: Burke, "Hybrid Recommender Systems: Survey and Experiments" (UMUAI 2002), the weighted kind,
with weights chosen on validation data. With `repeat`, BuyAgain's component (`buy_again.py`) joins the
blend and the weights are chosen on the repeat setting (seen items allowed in the lists).
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import scipy.sparse as sp
from sklearn.feature_extraction.text import TfidfVectorizer

from recsys_assets.contract.scoring import (
    BUCKETS,
    Component,
    Scorer,
    history_buckets,
    standardise,
    topk_from_scores,
    truth_to_csr,
)
from recsys_assets.lib.evaluation.batched import sample_users, users_with_truth
from recsys_assets.lib.evaluation.metrics import evaluate_topk
from recsys_assets.lib.models.base import ListsFn, ProtocolData, TrainData
from recsys_assets.lib.models.blend_search import BlendCandidates, blend_candidates
from recsys_assets.lib.models.buy_again import buy_again_component


class ComponentModel:
    """A model whose scoring is one `Component` (or a blend): fit builds it, score delegates.

    A `Recommender`: `fit` takes a protocol's split, or just its training part (`TrainData`).
    """

    name = "component"
    family = "native"
    scorer: Scorer
    history: sp.csr_matrix
    lists: ListsFn | None = None  # ranks through `score` (popularity overrides it: one order for everyone)
    search_seconds: float = 0.0  # no search in `fit` (the hybrid's is timed)

    def score(self, user_idx: np.ndarray) -> np.ndarray:
        """The scorer's scores of a batch of users (`Scorer.score_many`: each row as the one-user path gives it)."""
        return self.scorer.score_many(self.history[user_idx], np.asarray(user_idx))

    def params(self) -> dict[str, object]:
        return {}


def _train_part(data: TrainData | ProtocolData) -> TrainData:
    return data.data if isinstance(data, ProtocolData) else data


@dataclass
class PopularityModel(ComponentModel):
    """Most popular items first: distinct users per item, optionally time-decayed ("trending")."""

    half_life_days: float | None = None
    name: str = "Popularity"

    def fit(self, data: TrainData | ProtocolData) -> PopularityModel:
        data = _train_part(data)
        ev = data.events.drop_duplicates(["user_idx", "item_idx"], keep="last")
        weight = np.ones(len(ev))
        if self.half_life_days:
            age = (ev["timestamp"].max() - ev["timestamp"]).dt.total_seconds().to_numpy() / 86400
            weight = 0.5 ** (age / self.half_life_days)
        pop = np.bincount(ev["item_idx"].to_numpy(), weights=weight, minlength=data.n_items)
        self.component = Component("popularity", {"popularity": pop.astype(np.float32)})
        self.scorer = Scorer({"popularity": self.component}, {"popularity": 1.0})
        self.history = data.matrix
        return self

    def lists(self, user_idx: np.ndarray, k: int, hide: sp.csr_matrix | None) -> np.ndarray:
        """Top-`k` lists of `user_idx`, each one's row of `hide` left out: ranking `score`'s rows, from one order."""
        hide = None if hide is None else truth_to_csr(hide, self.history.shape[1])
        return popularity_lists(self.component.arrays["popularity"], hide, k, len(user_idx))


def item_documents(items: pd.DataFrame) -> list[str]:
    """One text per item: category tokens (kept whole), title words, free text, release decade."""
    cats = items.get("categories", pd.Series("", index=items.index)).fillna("").astype(str)
    title = items.get("title", pd.Series("", index=items.index)).fillna("").astype(str)
    text = items.get("text", pd.Series("", index=items.index)).fillna("").astype(str)
    year = pd.to_numeric(items.get("year", pd.Series(np.nan, index=items.index)), errors="coerce")
    decade = year.map(lambda y: f"decade_{int(y) // 10 * 10}" if pd.notna(y) else "")
    cat_tokens = cats.map(lambda c: " ".join(f"cat_{t.strip().replace(' ', '_')}" for t in c.split("|") if t.strip()))
    # category tokens twice: they are the strongest signal a catalog has
    return (cat_tokens + " " + cat_tokens + " " + title + " " + text + " " + decade).str.strip().tolist()


@dataclass
class ContentModel(ComponentModel):
    """TF-IDF over catalog metadata; a user's profile is the event-weighted sum of their items."""

    min_df: int = 1
    max_features: int | None = 50_000
    name: str = "Content"

    def fit(self, data: TrainData | ProtocolData) -> ContentModel:
        data = _train_part(data)
        docs = item_documents(data.items)
        if not any(docs):
            feats = sp.csr_matrix((data.n_items, 1), dtype=np.float32)
        else:
            vec = TfidfVectorizer(
                min_df=self.min_df,
                max_features=self.max_features,
                token_pattern=r"(?u)\b\w[\w\-]+\b",
                sublinear_tf=True,
                dtype=np.float32,
            )
            feats = sp.csr_matrix(vec.fit_transform(docs))
        self.component = Component("content", {"item_features": feats})
        self.scorer = Scorer({"content": self.component}, {"content": 1.0})
        self.history = data.matrix
        return self


@dataclass
class HybridModel(ComponentModel):
    """Weighted blend of a collaborative component, the content model and popularity (or trending).

    Chosen on the validation part, never the test part: the popularity variant (all-time or
    time-decayed with a half-life from `half_lives`), then blend weights on a grid over the simplex
    (`step`) by NDCG@10, once for everyone and once per history bucket ("0", "1-5", "6-20", "20+")
    that has at least `min_bucket_users` validation users. The search is bounded at any size: it scores
    at most `tune_users` validation users (a fixed sample seeded by `seed` above that) and evaluates at
    most `max_trials` blends over all its searches (a coarser grid when the full one would exceed that).
    Up to `candidates_above` items each trial ranks the whole catalog, for at most `tune_cells` users x
    items per component; above, it ranks each user's candidates, the union of every component's best
    items (`blend_search`), for at most `candidate_users` users and `candidate_cells` users x items (each
    user's candidates come from every component's scores over the whole catalog: 5,000 users x 1M items took
    18% of a 10M-event pipeline; 2,500 users at 100k items choose the same weights as 5,000 on the 1M-event
    benchmark log, in half the time). Cold start follows from the blend: with no
    history, collaborative and content scores are silent and popularity decides; with a few events,
    content and item-item evidence from those events count; a new item with metadata is reachable
    through content similarity.
    """

    collaborative: Component | None = None
    collaborative_name: str = ""
    step: float = 0.1
    k: int = 10
    half_lives: tuple[float | None, ...] = (None, 7.0, 30.0, 90.0)
    min_bucket_users: int = 30
    tune_users: int = 5_000
    tune_cells: int = 10_000_000
    candidate_cells: int = 2_000_000_000  # above `candidates_above`: users x items scored for the candidates
    candidate_users: int = 2_500  # above `candidates_above`: most users tuned on
    max_trials: int = 400
    candidates_above: int = 20_000  # items; above, the search ranks each user's candidates (`blend_search`)
    seed: int = 2020
    repeat: bool = False  # blend BuyAgain's component too, tuned with seen items allowed
    name: str = "Hybrid"
    components: dict[str, Component] = field(default_factory=dict)
    weights: dict[str, float] = field(default_factory=dict)
    bucket_weights: dict[str, dict[str, float]] = field(default_factory=dict)
    half_life_days: float | None = None
    tuning: pd.DataFrame | None = None
    search_seconds: float = 0.0  # the last fit's half-life and blend searches (the log's "search" time)

    def fit(self, data: TrainData | ProtocolData, valid: sp.csr_matrix | None = None) -> HybridModel:
        """Tune on `valid` (by default a protocol's validation part; none: equal weights), then blend."""
        if isinstance(data, ProtocolData) and valid is None:
            valid = data.valid_truth
        data = _train_part(data)
        self.history = data.matrix
        have_valid = valid is not None and valid.nnz > 0
        started = time.perf_counter()
        if have_valid:
            self.half_life_days = self._best_half_life(data, valid)
        searched = time.perf_counter() - started
        comps = self.components = _blend_parts(data, self.collaborative, self.half_life_days, self.repeat)
        names = list(comps)
        if not have_valid:
            self.weights = {n: 1.0 / len(names) for n in names}
        else:
            started = time.perf_counter()
            self._tune(names, data.matrix, valid)
            searched += time.perf_counter() - started
        self.search_seconds = searched
        self.scorer = Scorer(comps, self.weights, self.bucket_weights)
        return self

    def params(self) -> dict[str, object]:
        return {
            "weights": self.weights,
            "bucket_weights": self.bucket_weights,
            "popularity_half_life_days": self.half_life_days,
            "collaborative": self.collaborative_name,
            "repeat": self.repeat,
        }

    def refit(self, data: TrainData, collaborative: Component | None) -> HybridModel:
        """This hybrid's choices (popularity half-life, blend weights) on new data: every component is
        fitted again on `data` (`collaborative` already is), nothing is tuned again."""
        comps = _blend_parts(data, collaborative, self.half_life_days, self.repeat)
        out = HybridModel(
            collaborative=collaborative,
            collaborative_name=self.collaborative_name,
            repeat=self.repeat,
            half_life_days=self.half_life_days,
            components=comps,
            weights=dict(self.weights),
            bucket_weights={k: dict(v) for k, v in self.bucket_weights.items()},
        )
        out.history = data.matrix
        out.scorer = Scorer(comps, out.weights, out.bucket_weights)
        return out

    def _tuning_users(self, valid: sp.csr_matrix) -> np.ndarray:
        """The validation users the search scores: all of them up to its bounds, else a fixed sample."""
        n_items = max(valid.shape[1], 1)
        if n_items <= self.candidates_above:
            limit = min(self.tune_users, self.tune_cells // n_items)
        else:
            limit = min(self.tune_users, self.candidate_users, self.candidate_cells // n_items)
        limit = max(1, limit)
        return sample_users(users_with_truth(valid), limit, self.seed)

    def _best_half_life(self, data: TrainData, valid: sp.csr_matrix) -> float | None:
        users = self._tuning_users(valid)
        best: tuple[float, float | None] = (-1.0, None)
        seen = None if self.repeat else data.matrix[users]
        for half_life in self.half_lives:
            comp = PopularityModel(half_life_days=half_life).fit(data).component
            topk = popularity_lists(comp.arrays["popularity"], seen, self.k, len(users))
            value = _ndcg_of(topk, valid[users], self.k)
            if value > best[0]:
                best = (value, half_life)
        return best[1]

    def _tune(self, names: list[str], train: sp.csr_matrix, valid: sp.csr_matrix) -> None:
        users = self._tuning_users(valid)
        hist = train[users]
        ndcg = self._trial(names, hist, users, valid)
        buckets = history_buckets(hist)
        searched = [b for b in BUCKETS if (buckets == b).sum() >= self.min_bucket_users]
        steps = grid_steps(len(names), round(1 / self.step), self.max_trials // (1 + len(searched)))
        grid = [c for c in itertools.product(range(steps + 1), repeat=len(names)) if sum(c) == steps]
        rows = []

        def search(mask: np.ndarray, label: str) -> dict[str, float]:
            best: tuple[float, dict[str, float]] = (-1.0, {})
            for combo in grid:
                w = {n: c / steps for n, c in zip(names, combo, strict=True)}
                value = ndcg(w, mask)
                rows.append({"bucket": label, **w, f"ndcg@{self.k}": value})
                if value > best[0]:
                    best = (value, w)
            return best[1]

        self.weights = search(np.ones(len(users), dtype=bool), "all")
        self.bucket_weights = {bucket: search(buckets == bucket, bucket) for bucket in searched}
        self.tuning = pd.DataFrame(rows)

    def _trial(
        self, names: list[str], hist: sp.csr_matrix, users: np.ndarray, valid: sp.csr_matrix
    ) -> Callable[[dict[str, float], np.ndarray], float]:
        """NDCG@k of a blend for the users of a mask: over the whole catalog from standardised scores
        computed once, or over each user's candidates above `candidates_above` items."""
        truth = valid[users]
        if hist.shape[1] > self.candidates_above:
            cands = blend_candidates(self.components, names, hist, users, exclude_seen=not self.repeat)
            sliced: dict[bytes, tuple[BlendCandidates, sp.csr_matrix]] = {}  # each search's users, sliced once

            def among_candidates(w: dict[str, float], mask: np.ndarray) -> float:
                key = mask.tobytes()
                if key not in sliced:
                    sliced.clear()
                    sliced[key] = (cands.subset(mask), truth[mask])
                sub, sub_truth = sliced[key]
                return _ndcg_of(sub.topk(w, None, self.k), sub_truth, self.k)

            return among_candidates
        parts = {n: standardise(self.components[n].raw_scores(hist, users)) for n in names}

        def exact(w: dict[str, float], mask: np.ndarray) -> float:
            total = sum(w[n] * parts[n][mask] for n in names if w[n])
            return _ndcg_at(total, None if self.repeat else hist[mask], truth[mask], self.k)

        return exact


def popularity_lists(popularity: np.ndarray, seen: sp.csr_matrix | None, k: int, n_users: int) -> np.ndarray:
    """Top-`k` lists (n_users x k, -1 padded) of one score for everyone, `seen` items left out: what
    `ranked_lists` gives for a popularity score (ties by item index), without n_users x n_items scores
    (5,000 users x 1M items is 5e9 cells a half-life)."""
    order = np.lexsort((np.arange(len(popularity)), -np.asarray(popularity, dtype=np.float64)))
    out = np.full((n_users, k), -1, dtype=np.int64)
    if seen is None:
        out[:, : min(k, len(order))] = order[:k]
        return out
    seen = sp.csr_matrix(seen)
    for row in range(n_users):
        had = seen.indices[seen.indptr[row] : seen.indptr[row + 1]]
        head = order[: k + len(had)]
        kept = head[~np.isin(head, had)][:k]
        out[row, : len(kept)] = kept
    return out


def grid_steps(n_parts: int, steps: int, budget: int) -> int:
    """The finest grid over the simplex, at most `steps` divisions, with at most `budget` points (>= 1)."""
    while steps > 1 and math.comb(steps + n_parts - 1, n_parts - 1) > budget:
        steps -= 1
    return steps


def _blend_parts(
    data: TrainData, collaborative: Component | None, half_life_days: float | None, repeat: bool = False
) -> dict[str, Component]:
    """The hybrid's components on `data`: the collaborative one as given, content and popularity fitted
    (and with `repeat` BuyAgain's, at the popularity's half-life)."""
    comps: dict[str, Component] = {} if collaborative is None else {"collaborative": collaborative}
    comps["content"] = ContentModel().fit(data).component
    comps["popularity"] = PopularityModel(half_life_days=half_life_days).fit(data).component
    if repeat:
        comps["buy_again"] = buy_again_component(data, half_life_days)
    return comps


def _ndcg_at(scores: np.ndarray, seen: sp.csr_matrix | None, truth: sp.csr_matrix, k: int) -> float:
    return _ndcg_of(topk_from_scores(scores, k, exclude=seen), truth, k)


def _ndcg_of(topk: np.ndarray, truth: sp.csr_matrix, k: int) -> float:
    res = evaluate_topk(topk, truth, ks=(k,))
    return float(res.loc[res["metric"] == "ndcg", "value"].iloc[0])
