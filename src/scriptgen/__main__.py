"""`python -m scriptgen` is the `scriptgen` command."""

from scriptgen.cli.main import main

raise SystemExit(main())
