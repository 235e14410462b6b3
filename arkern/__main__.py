"""`python -m arkern` is the `arkern` command."""

from arkern.cli import main

raise SystemExit(main())
