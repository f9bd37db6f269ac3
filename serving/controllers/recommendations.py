"""`GET /v1/users/{user_id}/recommendations`."""

from __future__ import annotations

from litestar import Controller, get

from recsys_assets.contract.settings import Settings
from serving.controllers.params import Category, ExcludeSeen, K, UserId
from serving.controllers.responses import errors
from serving.errors import check_path_id
from serving.eventlog import EventLog
from serving.live import LiveState
from serving.model import ModelHolder
from serving.schemas import Recommendations
from serving.service import serve_recommendations


class RecommendationController(Controller):
    path = "/v1/users"
    tags = ("recommendations",)

    @get(
        "/{user_id:str}/recommendations",
        operation_id="getRecommendations",
        summary="Recommendations for a user",
        responses=errors(400, 429, 503),
    )
    async def get_recommendations(
        self,
        user_id: UserId,
        holder: ModelHolder,
        live: LiveState,
        event_log: EventLog,
        settings: Settings,
        k: K = 10,
        category: Category = None,
        exclude_seen: ExcludeSeen = None,
    ) -> Recommendations:
        """Ranked items for a user, each with a reason; unknown and new users get the cold-start list."""
        check_path_id("user_id", user_id)
        return await serve_recommendations(holder, live, event_log, settings, user_id, k, category, exclude_seen)
