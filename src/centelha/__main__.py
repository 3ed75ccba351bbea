"""`python -m centelha` runs the command line (and lets torchrun start it with `-m`)."""

from centelha.cli import main

if __name__ == "__main__":
    main()
