"""`python -m elastic_slice` runs the command line."""

from .cli import main

main()
