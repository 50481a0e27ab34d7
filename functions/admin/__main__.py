"""`python -m functions.admin COMMAND`."""

import sys

from functions.admin.cli import main

sys.exit(main())
