"""``python -m fmredis``: the command-line interface (see :mod:`fmredis.cli`)."""

from fmredis.cli import main

raise SystemExit(main())
