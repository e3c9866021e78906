"""``python -m icgd``: the same command line as the ``icgd`` script."""

from icgd.cli import main

if __name__ == "__main__":
    main()
