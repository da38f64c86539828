"""Plumbing of a worker process: settings, Redis clients, the broker, process management.

- ``settings``: the environment, read and checked once;
- ``parts``: each worker process's long-lived parts (Redis, store, gate, client), built
  once after dramatiq forks;
- ``broker`` and ``redis_client``: the dramatiq broker and Redis clients that wait out an
  outage; ``recovery``: hands back stranded messages after one;
- ``launch`` and ``dramatiq_main``: how the worker command starts dramatiq;
- ``lua``: loading the Lua scripts that sit beside the modules using them;
- ``processes`` and ``redis_server``: child processes (the embedded redis-server).

Nothing here knows about intents or WeChat beyond wiring the parts together.
"""
