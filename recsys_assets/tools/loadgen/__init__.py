"""Load benchmarks of the recommendation API: `python -m recsys_assets.tools.loadgen <command>`
(`make bench`, `make soak`).

Each command starts what users run (a `redis-server` and `python -m serving` with
`RECSYS_API_WORKERS` workers and rate limiting off) on free ports of 127.0.0.1, loads it, and stops
it. `--storage` names a storage folder holding a champion artifact; when it has none, the pipeline
makes one first (`python -m recsys_assets pipeline --budget smoke --models Pop,EASE,MultiVAE`, a
Hybrid over MovieLens-100k). `--url` targets an API already running on 127.0.0.1 instead.

The load is open-loop: requests are scheduled at a fixed arrival rate whatever the answers, and
each latency runs from the request's scheduled time, so a stalled server shows as latency rather
than as fewer requests (no coordinated omission). The mix: `--event-share` (10%) single click
events `POST /v1/events` with an API key, half of them answering a served list (its
`recommendation_id`, one of its items); the rest `GET /v1/users/{user_id}/recommendations?k=10`
for a user drawn from all of the artifact's users plus `--unknown-share` (5%) users it does not know.

Commands:

* `latency`: a fixed rate for a duration after a warm-up (200/s for 60 s): p50/p95/p99, throughput,
  errors; then the in-process p50 of the same users' lists (`Scorer.topk_one`, and the API's
  `recommend` without HTTP) on the same artifact, and the ratio of the API's p50 to it;
* `ramp`: fixed rates in steps (30 s each) until p95 reaches `--max-p95-ms` or a request fails;
  then `wrk` with a Lua script of the same mix, closed-loop, for the saturation throughput;
* `ingest`: batches (100, 500 events) from 4 clients for 20 s, each on a kept-alive connection (or a
  new connection per batch with `--connection-per-batch`): events acknowledged (202) per second, then
  the acknowledged events counted in the event-log segments;
* `soak`: a fixed rate for a long time (100/s, 30 min) with the resident memory of the API's
  processes sampled every 10 s: growth after the warm-up, errors, latency per minute; with `--faults
  kill_worker,redis_restart` (`make soak`) a worker killed and Redis restarted mid-run, and the
  availability read by the client, from the API's `/metrics` and by a `/ready` probe (`faults.py`);
* `scale`: for 1, 2, 4 workers a fixed rate and a `wrk` run; then an event posted to one API
  process and the next list from another, both on one Redis;
* `all`: latency, ramp, ingest (both connection modes) and scale, in that order.

Every command prints its figures as JSON (also written to `--out`) with the command line, the
machine, the date, and the CPU used during each run by the API's processes, Redis, the generator,
`wrk` and every other process; progress goes to stderr. On a shared machine, `--quiet-wait` waits for
it to be idle before each run and repeats a run that other processes disturbed.
"""
