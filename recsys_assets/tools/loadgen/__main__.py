"""`python -m recsys_assets.tools.loadgen <command>`."""

import signal
import sys

from recsys_assets.tools.loadgen.command_line import main

# SIGTERM (and SIGINT, which a shell ignores in background jobs) stop like Ctrl-C, so the servers
# this run started are stopped too
signal.signal(signal.SIGTERM, signal.default_int_handler)
signal.signal(signal.SIGINT, signal.default_int_handler)
sys.exit(main())
