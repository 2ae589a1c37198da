"""Allow ``python -m beiflow``."""

from beiflow.ingest.cli import main

raise SystemExit(main())
