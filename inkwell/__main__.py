"""`python -m inkwell ...` runs the CLI (how `inkwell up` starts its components)."""

from inkwell_app.cli import main

if __name__ == "__main__":
    main()
