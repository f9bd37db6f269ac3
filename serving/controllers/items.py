"""`GET /v1/items/{item_id}/similar`."""

from __future__ import annotations

from litestar import Controller, get

from serving.controllers.params import ItemId, K
from serving.controllers.responses import errors
from serving.errors import check_path_id
from serving.model import ModelHolder
from serving.recommend import similar_items
from serving.schemas import SimilarItems


class ItemController(Controller):
    path = "/v1/items"
    tags = ("items",)

    @get(
        "/{item_id:str}/similar",
        operation_id="getSimilarItems",
        summary="Items similar to an item",
        responses=errors(400, 404, 429, 503),
    )
    async def get_similar(self, item_id: ItemId, holder: ModelHolder, k: K = 10) -> SimilarItems:
        """Items most similar to an item (item-item component if the model has one, else content)."""
        check_path_id("item_id", item_id)
        model = holder.require_champion()
        source, items = similar_items(model, item_id, k)
        return SimilarItems(item_id=item_id, model_version=model.version, source=source, items=items)  # type: ignore[arg-type]
