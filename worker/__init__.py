"""tagsync's worker: how an intent becomes a WeChat call, one module per step, in order.

    application  producers.tag(...)       -> queue ``tagsync.intents`` (``queues.py``)
    1. actors.ingest                      ``actors.py``: the dramatiq actors, the entry point
    2. ingest.ingest_rows                 ``ingest.py``: check rows; bad ones to dead letters;
                                          tag names to ids (``tag_names.py``)
    3. PendingStore.ingest                ``pending/``: per-tag buffers in Redis, last write wins
    4. actors.flush -> Flusher.flush      ``flush.py``: lease the tag, take a batch of <= 50
    5. AccountGate.admit                  ``gate/``: a call slot (the account's rate, daily
                                          budget, pauses)
    6. WeChatClient.batch_tag             ``wechat/``: the call; ``errcodes.py``: the policy
    7. settle the answer                  applied: ``pending/`` (ack); refused openids:
                                          ``split.py``; given up: ``dead_letters.py``

Each step works for the intent's account: ``accounts/`` gives the served accounts (a file,
Open Platform authorizations in Redis, WeChat's pushes, an operator's pauses and limits)
with each one's client and gate. ``sweep.py`` sends a flush to any tag that has work but
none coming (lost wake-ups); ``http.py`` is the ingest server (intents, the account
endpoints and controls, WeChat's pushes).

Around the pipeline, each in a package of its own, from the bottom up:
``base/`` (settings, Lua scripts, backoff), ``observability/`` (metrics, logs, redaction),
``runtime/`` (one process's wiring, the metrics endpoint, starting processes),
``admin/`` (the operator's tools: admin calls, drain, export, reconcile, status, explain) and
``cli/`` (the ``tagsync`` command, one module per command; nothing imports it).
"""
