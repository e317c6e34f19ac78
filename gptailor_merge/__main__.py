"""`python -m gptailor_merge ...`: see `gptailor_merge.cli`."""

from gptailor_merge.cli import main

raise SystemExit(main())
