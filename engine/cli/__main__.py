"""`python -m engine.cli ...` (how accelerate launches training on each node) runs the `fea` command."""
import sys

from engine.cli.main import main

sys.exit(main())
