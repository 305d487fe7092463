"""`python -m jlang.cli ...` is `jlang ...`."""

import sys

from jlang.cli.app import main

sys.exit(main())
