"""``python -m worker``: the same as the ``tagsync`` command."""

from worker.cli import main

raise SystemExit(main())
