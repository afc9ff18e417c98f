import sys

from privfed.cli import main

sys.exit(main())
