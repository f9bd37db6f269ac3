import sys

from recsys_assets.tools.cli import main

sys.exit(main())
