"""Parameter declarations shared by the controllers (validated by Litestar, documented in OpenAPI)."""

from __future__ import annotations

from typing import Annotated

from litestar.params import Parameter

# one printable line: ids end up in CSV segments, Redis keys and log lines
ID_PATTERN = r"^[^\x00-\x1f\x7f]+$"

UserId = Annotated[str, Parameter(min_length=1, max_length=256, pattern=ID_PATTERN, description="User id.")]
ItemId = Annotated[str, Parameter(min_length=1, max_length=256, pattern=ID_PATTERN, description="Item id.")]
K = Annotated[int, Parameter(ge=1, le=100, description="How many items to return.")]
Category = Annotated[
    str | None,
    Parameter(
        max_length=256,
        pattern=ID_PATTERN,
        description="Only items of this catalog category (case-insensitive); none match: an empty list.",
    ),
]
ExcludeSeen = Annotated[
    bool, Parameter(description="Leave out items the user already interacted with (training and live events).")
]
