import sys

from fedcond.cli import main

sys.exit(main())
