"""The model catalog names only models the library can train, tune and export."""

from recsys_assets.lib.models import catalog
from recsys_assets.lib.models.recbole_config import SUPPORTED_MODELS
from recsys_assets.lib.models.tuning import SEARCH_SPACES, TRIALS


def test_every_catalogued_recbole_model_is_supported_by_the_adapter() -> None:
    assert set(catalog.RECBOLE_DEFAULT) <= set(SUPPORTED_MODELS)
    assert set(catalog.EXPORTABLE) <= set(SUPPORTED_MODELS)
    assert set(catalog.TUNED) <= set(SUPPORTED_MODELS)
    assert not set(catalog.NATIVE) & set(SUPPORTED_MODELS)


def test_tuned_models_have_a_budget_and_a_search_space() -> None:
    assert set(catalog.TUNED) == set(TRIALS) == set(SEARCH_SPACES)


def test_the_implicit_models_are_named_once_and_known_to_their_module() -> None:
    from recsys_assets.lib.models.implicit_cf import MODELS

    assert catalog.IMPLICIT == MODELS
    assert not set(catalog.IMPLICIT) & (set(SUPPORTED_MODELS) | set(catalog.NATIVE))
