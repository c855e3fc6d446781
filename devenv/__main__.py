"""`python -m devenv` is the same program as the `devenv` console script."""

from devenv.cli.entry import main

raise SystemExit(main())
