"""`python -m gptailor_merge ...`: see `gptailor_merge.cli.app`."""

from gptailor_merge.cli.app import main

raise SystemExit(main())
