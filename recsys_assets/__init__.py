"""The Dagster code location and the recommender library it drives."""
