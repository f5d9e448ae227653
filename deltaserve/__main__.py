"""`python -m deltaserve ...` is the `deltaserve` command."""

from deltaserve.entrypoints.cli import main

if __name__ == "__main__":
    main()
