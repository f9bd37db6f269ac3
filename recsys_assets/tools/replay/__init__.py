"""The closed-loop replay simulator: a held-out future window replayed through the running API.

`data` splits a data set in time and writes the past for the pipeline; `behaviour` decides how a
simulated user reacts to a served list from their real future; `simulator` drives the API
(`run_replay(config) -> ReplayResult`); `report` measures per A/B arm and stores `replay_runs`.
`python -m recsys_assets.tools.replay --help` is the command line. Importing this package imports none of
its modules.
"""
