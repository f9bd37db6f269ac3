"""One controller per resource of the API."""

from serving.controllers.events import EventController
from serving.controllers.health import HealthController
from serving.controllers.items import ItemController
from serving.controllers.model import ModelController
from serving.controllers.recommendations import RecommendationController

__all__ = ["EventController", "HealthController", "ItemController", "ModelController", "RecommendationController"]
