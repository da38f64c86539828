"""The operator's tools: what the ``tagsync`` commands do beyond running the pipeline.

- ``gated_client``: admin calls through the account's gate (rate, budget, pauses shared
  with the workers), and how a command picks its account (``--account``);
- ``drain``: delete a tag of over 100,000 fans by untagging the surplus through the queue;
- ``export``: a tag's fans to a file, resumable;
- ``sorted_diff``: reconcile's external sort and merge-walk (desired set vs WeChat's);
- ``status_report``: what ``tagsync status`` reports, read from Redis; ``health``: its
  verdict for ``--check``;
- ``progress``: progress lines of long commands.

Nothing in the pipeline imports this package; the commands in ``worker.cli`` do.
"""
