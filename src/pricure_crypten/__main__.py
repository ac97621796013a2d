"""``python -m pricure_crypten [demo|budget] ...`` (no subcommand runs the demo)."""

import sys

from .cli import main

if __name__ == "__main__":
    args = sys.argv[1:]
    if not args or args[0].startswith("-") and args[0] not in ("-h", "--help"):
        args = ["demo", *args]
    sys.exit(main(args))
