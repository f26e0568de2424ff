"""``python -m camstack``: the same as the installed ``camstack`` command."""

from camstack.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
