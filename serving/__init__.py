"""The recommendation API (Litestar): recommendations with reasons, similar items, events with live
adaptation, impressions, metrics and model hot reload. `serving.app.create_app` builds it."""
