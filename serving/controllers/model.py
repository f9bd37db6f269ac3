"""`GET /v1/model` and `POST /v1/admin/reload`."""

from __future__ import annotations

from litestar import Controller, get, post
from litestar.status_codes import HTTP_200_OK

from serving.controllers.responses import errors
from serving.model import ModelHolder
from serving.schemas import ModelInfo
from serving.security import SECURITY_SCHEME, requires


def model_info(holder: ModelHolder) -> ModelInfo:
    champion, challenger = holder.champion, holder.challenger
    return ModelInfo(
        champion=champion.info() if champion is not None else None,
        challenger=challenger.info() if challenger is not None else None,
        challenger_share=holder.challenger_share,
        challenger_role=holder.challenger_role,
        last_rejected=holder.last_rejected,
    )


class ModelController(Controller):
    path = "/v1"
    tags = ("model",)

    @get("/model", operation_id="getModel", summary="Served models", responses=errors(429))
    async def get_model(self, holder: ModelHolder) -> ModelInfo:
        """The champion and challenger this worker serves, and the last artifact it refused."""
        return model_info(holder)

    @post(
        "/admin/reload",
        operation_id="reloadModel",
        summary="Reload the models now",
        status_code=HTTP_200_OK,
        guards=[requires("admin")],
        security=[{SECURITY_SCHEME: []}],
        responses=errors(401, 403, 409, 429),
    )
    async def reload(self, holder: ModelHolder) -> ModelInfo:
        """Re-read the champion pointer and artifacts now (this worker; the others at their next poll)."""
        await holder.refresh(force=True)
        return model_info(holder)
