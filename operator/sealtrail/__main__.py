"""`python -m sealtrail` is the `sealtrail` command."""

from sealtrail.cli import main

raise SystemExit(main())
