"""`python -m jlang.cli ...` is `jlang ...` (and so are the old `python -m jlang.stats_cli` / `jlang.finetune_cli`)."""

import sys

from jlang.cli.app import main

if __name__ == "__main__":
    sys.exit(main())
