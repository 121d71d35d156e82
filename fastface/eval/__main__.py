"""`python -m fastface.eval`: the `fastface-eval` command."""
import sys

from .run import main

sys.exit(main())
