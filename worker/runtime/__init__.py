"""The wiring of a worker process, and the processes around it.

- ``parts``: each worker process's long-lived parts (Redis, store, accounts, names), built
  once after dramatiq forks;
- ``broker`` and ``redis_client``: the dramatiq broker and Redis clients that wait out an
  outage; ``recovery``: hands back stranded messages after one; ``lifecycle``: heartbeats
  and a clean stop; ``timer``: the periodic sweep's thread;
- ``metrics_server``: the metrics endpoint, with backlog gauges read from Redis;
- ``launch`` and ``dramatiq_main``: how the worker command starts dramatiq;
  ``ingest_conf``: gunicorn's settings for the HTTP ingest;
- ``processes`` and ``redis_server``: child processes and their ports (the embedded
  redis-server of the demo, the dev stack and the tests).

Nothing here knows about intents or WeChat beyond wiring the parts together.
"""
