"""``python -m cds.cli``: the same as the ``mskcds`` command."""
import sys

from cds.cli.main import main

sys.exit(main())
