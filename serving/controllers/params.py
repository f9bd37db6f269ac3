"""Parameter declarations shared by the controllers (validated by Litestar, documented in OpenAPI)."""

from __future__ import annotations

from typing import Annotated

from litestar.params import Parameter

from serving.schemas import ID_MAX_LENGTH, ID_PATTERN, ID_RULE

# a category is catalog text ("Children's", "Film-Noir"), not an id: one printable line
CATEGORY_PATTERN = r"^[^\x00-\x1f\x7f]+$"

UserId = Annotated[
    str,
    Parameter(min_length=1, max_length=ID_MAX_LENGTH, pattern=ID_PATTERN, description=f"User id: {ID_RULE}."),
]
ItemId = Annotated[
    str,
    Parameter(min_length=1, max_length=ID_MAX_LENGTH, pattern=ID_PATTERN, description=f"Item id: {ID_RULE}."),
]
K = Annotated[int, Parameter(ge=1, le=100, description="How many items to return.")]
Category = Annotated[
    str | None,
    Parameter(
        max_length=256,
        pattern=CATEGORY_PATTERN,
        description="Only items of this catalog category (case-insensitive); none match: an empty list.",
    ),
]
ExcludeSeen = Annotated[
    bool | None,
    Parameter(
        description="Leave out items the user already interacted with (training and live events); default: true, "
        "false when the configured `evaluation_target` is `repeat` or `blended` (buy again)."
    ),
]
