import sys

from mcp_overlay_server.cli import main

sys.exit(main())
