"""`python -m bench NAME [--quick]`."""

import sys

from bench.harness import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
