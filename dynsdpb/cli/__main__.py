"""`python -m dynsdpb.cli ...` (and torchrun's `-m dynsdpb.cli`): the same as the `dynsdpb` command."""
import sys

from dynsdpb.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
