"""``python -m fastnn``: the same as the ``fastnn`` command."""
from fastnn.cli import main

raise SystemExit(main())
