"""A trained RecBole model that speaks our user and item ids: full-ranking scores, top-K lists and the embeddings
a dot-product index can serve, all in RecBole's item order (`item_ids`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd
import scipy.sparse as sp

from recsys_assets.lib.models.recbole_config import RecBoleModelConfig

if TYPE_CHECKING:
    import torch

__all__ = ["EmbeddingExport", "History", "TrainedRecBoleModel"]

History = Literal["train", "train+valid", "all"]
_HISTORY_SPLITS: dict[str, tuple[str, ...]] = {
    "train": ("train",),
    "train+valid": ("train", "valid"),
    "all": ("train", "valid", "test"),
}

# Upper bound on user x item pairs scored at once when a model only scores pairs (NeuMF).
_PAIRS_PER_BATCH = 1_000_000


@dataclass(frozen=True)
class EmbeddingExport:
    """User and item vectors whose dot products rank items; rows follow `user_ids` and `item_ids`."""

    user_ids: list[str]
    item_ids: list[str]
    user_embeddings: np.ndarray
    item_embeddings: np.ndarray
    # False when the dot product leaves out part of the model (NeuMF: only its GMF path is exported).
    exact: bool


class TrainedRecBoleModel:
    """A trained RecBole model (best validation epoch) that speaks our user and item ids.

    Scores cover every item RecBole knows (every item in any of the three splits), in the order of `item_ids`.
    """

    def __init__(
        self,
        *,
        config: RecBoleModelConfig,
        model: torch.nn.Module,
        user_ids: list[str],
        item_ids: list[str],
        histories: dict[str, pd.DataFrame],
        test_metrics: dict[str, float],
        best_valid_metrics: dict[str, float],
        best_valid_score: float,
        epochs_trained: int,
        train_seconds: float,
        valid_scores: Sequence[float] = (),
    ) -> None:
        self.config = config
        self.model = model
        self.user_ids = user_ids
        self.item_ids = item_ids
        self.test_metrics = test_metrics
        self.best_valid_metrics = best_valid_metrics
        self.best_valid_score = best_valid_score
        self.epochs_trained = epochs_trained
        self.train_seconds = train_seconds
        # `valid_metric` after each epoch; the model holds the weights of the best one
        self.valid_scores = tuple(valid_scores)
        self._histories = histories
        self._joined: dict[str, pd.DataFrame] = {}
        self._sequence_cache: dict[str, dict[int, list[int]]] = {}
        # RecBole's internal id 0 is its padding token, so our i-th id is internal id i + 1.
        self.user_index: dict[str, int] = {user: i + 1 for i, user in enumerate(user_ids)}
        self.item_index: dict[str, int] = {item: i + 1 for i, item in enumerate(item_ids)}

    @property
    def model_name(self) -> str:
        return self.config.model

    def history(self, history: History = "train") -> pd.DataFrame:
        """The interactions the model may condition on, as internal ids (`user`, `item`), oldest first per user."""
        if history not in self._joined:  # scored batch after batch: joined once
            frames = [self._histories[split] for split in _HISTORY_SPLITS[history]]
            self._joined[history] = pd.concat(frames, ignore_index=True)
        return self._joined[history]

    def score(
        self,
        user_ids: Sequence[str],
        *,
        history: History = "train",
        exclude_history: bool = True,
        batch_size: int = 1024,
    ) -> np.ndarray:
        """Full-ranking scores, shape (len(user_ids), len(item_ids)); items in `history` are -inf when excluded.

        `history` is also what a sequential model reads as each user's item sequence (its last `max_seq_length`).
        """
        import torch

        users = self._internal_users(user_ids)
        seen = self.history(history)
        sequences = None
        if self.config.spec.sequential:
            if history not in self._sequence_cache:
                self._sequence_cache[history] = self._sequences(seen)
            sequences = self._sequence_cache[history]
        scores = np.empty((len(users), len(self.item_ids)), dtype=np.float32)
        self.model.eval()
        with torch.no_grad():
            for start in range(0, len(users), batch_size):
                batch = users[start : start + batch_size]
                scores[start : start + len(batch)] = self._score_batch(batch, sequences)
        if exclude_history and len(seen):
            matrix = sp.csr_matrix(
                (np.ones(len(seen), dtype=np.int8), (seen["user"].to_numpy(), seen["item"].to_numpy())),
                shape=(len(self.user_ids) + 1, len(self.item_ids) + 1),
            )[users]
            rows, cols = matrix.nonzero()
            scores[rows, cols - 1] = -np.inf
        return scores

    def recommend(
        self,
        user_ids: Sequence[str],
        k: int = 10,
        *,
        history: History = "train",
        exclude_history: bool = True,
    ) -> pd.DataFrame:
        """Top-`k` items per user: columns `user_id`, `rank` (1 = best), `item_id`, `score`."""
        if k < 1:
            raise ValueError(f"k must be at least 1, not {k}")
        scores = self.score(user_ids, history=history, exclude_history=exclude_history)
        k = min(k, scores.shape[1])
        top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        top_scores = np.take_along_axis(scores, top, axis=1)
        order = np.argsort(-top_scores, axis=1, kind="stable")
        top, top_scores = np.take_along_axis(top, order, axis=1), np.take_along_axis(top_scores, order, axis=1)
        frame = pd.DataFrame(
            {
                "user_id": np.repeat(np.asarray(user_ids, dtype=object), k),
                "rank": np.tile(np.arange(1, k + 1), len(user_ids)),
                "item_id": np.asarray(self.item_ids, dtype=object)[top.ravel()],
                "score": top_scores.ravel(),
            }
        )
        # Excluded items score -inf: a user with fewer than k candidates gets fewer rows.
        return frame[np.isfinite(frame["score"])].reset_index(drop=True)

    def embeddings(self) -> EmbeddingExport | None:
        """User and item vectors for a dot-product index (BPR, LightGCN, NGCF exactly; NeuMF's GMF path), or None."""
        import torch

        model, name = self.model, self.config.model
        model.eval()
        with torch.no_grad():
            if name == "BPR":
                users, items, exact = model.user_embedding.weight, model.item_embedding.weight, True
            elif name in ("LightGCN", "NGCF"):
                # Their scores are dot products of the propagated embeddings, not of the raw tables.
                users, items = model.forward()
                exact = True
            elif name == "NeuMF" and model.mf_train:
                mf_size = model.user_mf_embedding.weight.shape[1]
                # GMF scores sum_k w_k p_k q_k: folding the output weights into the user side keeps that exact.
                weights = model.predict_layer.weight[0, :mf_size]
                users, items = model.user_mf_embedding.weight * weights, model.item_mf_embedding.weight
                exact = not model.mlp_train
            else:
                return None
        return EmbeddingExport(
            user_ids=list(self.user_ids),
            item_ids=list(self.item_ids),
            user_embeddings=users[1:].detach().cpu().numpy().copy(),
            item_embeddings=items[1:].detach().cpu().numpy().copy(),
            exact=exact,
        )

    def _internal_users(self, user_ids: Sequence[str]) -> np.ndarray:
        unknown = [user for user in user_ids if user not in self.user_index]
        if unknown:
            raise ValueError(f"{len(unknown)} user id(s) unknown to the model, e.g. {unknown[:5]}")
        return np.fromiter((self.user_index[user] for user in user_ids), dtype=np.int64, count=len(user_ids))

    def _sequences(self, seen: pd.DataFrame) -> dict[int, list[int]]:
        limit = self.config.max_seq_length
        return {int(user): items[-limit:] for user, items in seen.groupby("user", sort=False)["item"].agg(list).items()}

    def _score_batch(self, users: np.ndarray, sequences: dict[int, list[int]] | None) -> np.ndarray:
        import torch
        from recbole.data.interaction import Interaction

        fields: dict[str, torch.Tensor] = {self.model.USER_ID: torch.from_numpy(users)}
        if sequences is not None:
            width = self.config.max_seq_length
            item_lists = torch.zeros((len(users), width), dtype=torch.long)
            lengths = torch.ones(len(users), dtype=torch.long)  # no history: one padding item, not an empty list
            for row, user in enumerate(users.tolist()):
                items = sequences.get(user, [])
                if items:
                    item_lists[row, : len(items)] = torch.tensor(items)
                    lengths[row] = len(items)
            fields[self.model.ITEM_SEQ] = item_lists
            fields[self.model.ITEM_SEQ_LEN] = lengths
        interaction = Interaction(fields).to(self.model.device)
        try:
            scores = self.model.full_sort_predict(interaction)
        except NotImplementedError:
            scores = self._score_pairs(interaction, len(users))
        return scores.view(len(users), -1)[:, 1:].cpu().numpy()  # column 0 is the padding item

    def _score_pairs(self, interaction: Any, n_users: int) -> torch.Tensor:
        # What RecBole's Trainer does for models without full_sort_predict: score every (user, item) pair.
        import torch
        from recbole.data.interaction import Interaction

        n_items = len(self.item_ids) + 1
        pairs = interaction.repeat_interleave(n_items)
        pairs.update(Interaction({self.model.ITEM_ID: torch.arange(n_items, device=self.model.device).repeat(n_users)}))
        step = max(n_items, _PAIRS_PER_BATCH // n_items * n_items)
        return torch.cat([self.model.predict(pairs[start : start + step]) for start in range(0, len(pairs), step)])
