"""`python -m fastervar.cli`: the same command line as `fastervar`."""

from . import main

main()
