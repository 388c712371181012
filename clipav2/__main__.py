import sys

from clipav2.cli import main

sys.exit(main())
