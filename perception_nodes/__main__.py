"""``python -m perception_nodes`` is the ``perception-stack`` CLI."""

from perception_nodes.cli import main

raise SystemExit(main())
