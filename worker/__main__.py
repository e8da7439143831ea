import sys

from esgd.worker.cli import main

sys.exit(main())
