"""The champion change log: who moved the champion, and which version a rollback returns to."""

from __future__ import annotations

from pathlib import Path

import pytest

from recsys_assets.contract.storage import Storage
from recsys_assets.lib import champion


def test_rollback_target_walks_back_past_rollbacks(tmp_path: Path) -> None:
    store = Storage.from_uri(str(tmp_path))
    assert champion.read_changes(store).empty
    assert champion.previous_champion(store, "1") is None
    for action, old, new in (("pipeline", "", "1"), ("pipeline", "1", "2"), ("promote", "2", "3")):
        champion.record_change(store, {"actor": "a", "action": action, "from_version": old, "to_version": new})
    assert champion.previous_champion(store, "3") == "2"
    champion.record_change(store, {"actor": "b", "action": "rollback", "from_version": "3", "to_version": "2"})
    # a second rollback goes one more champion back, not forth to 3 again
    assert champion.previous_champion(store, "2") == "1"
    assert champion.previous_champion(store, "1") is None  # the first champion had none before it
    table = champion.read_changes(store)
    assert list(table.columns) == list(champion.CHANGE_COLUMNS)
    assert table["at"].is_monotonic_increasing and str(table["at"].dt.tz) == "UTC"
    assert table["actor"].tolist() == ["a", "a", "a", "b"]


def test_default_actor_names_who_runs_the_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECSYS_ACTOR", "oncall:alice")
    assert champion.default_actor() == "oncall:alice"
    monkeypatch.delenv("RECSYS_ACTOR")
    assert "@" in champion.default_actor()
