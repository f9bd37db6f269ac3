"""The training limits (`Settings.limits`, `RECSYS_LIMITS__*`): the memory and time every candidate must
fit before it trains, the comparison's whole time budget, the largest catalog EASE may densify, and the
threads a training step may use.

Kept out of `settings.py` so the settings module stays one screenful per concern; `Settings` holds one.
"""

from __future__ import annotations

import os

from pydantic import BaseModel, ConfigDict, Field


class TrainingLimits(BaseModel):
    """Checked before each candidate trains (`lib.models.sizing`): one over budget is skipped with the reason."""

    model_config = ConfigDict(frozen=True)

    max_memory_gb: float = Field(
        default=16.0, gt=0, description="Largest estimated peak memory (GB) of one candidate's training step."
    )
    max_minutes: float = Field(default=30.0, gt=0, description="Largest estimated training time of one candidate.")
    comparison_minutes: float = Field(
        default=10.0,
        ge=0,
        description="Estimated minutes the whole comparison may take (every candidate on every split). Candidates "
        "are admitted cheapest first until it is spent; the rest are skipped with the reason. 0: no budget.",
    )
    ease_max_items: int = Field(
        default=20_000, ge=1, description="EASE (dense items x items) is refused above this many items."
    )
    threads: int = Field(
        default=0,
        ge=0,
        description="Threads of one model's training (implicit's loops); 0: OMP_NUM_THREADS when set, else every "
        "core. Steps side by side should share the cores, not each take them all.",
    )

    def training_threads(self) -> int:
        """`threads`, or OMP_NUM_THREADS, or the machine's cores (read when called, not at import)."""
        if self.threads:
            return self.threads
        env = os.environ.get("OMP_NUM_THREADS", "")
        return int(env) if env.isdigit() and int(env) > 0 else os.cpu_count() or 1
