"""`python -m recpipe` is the same as the `recpipe` console script."""

from recpipe.cli import main

raise SystemExit(main())
