"""``python -m fakewechat``: the same as the ``fakewechat`` command."""

from fakewechat.cli import main

raise SystemExit(main())
