"""`python -m aware_cli ...` (used by torchrun) runs the same CLI as `aware`."""

from aware_cli.cli import main

if __name__ == "__main__":
    main()
