import sys

from harness_xai.cli import main

sys.exit(main())
