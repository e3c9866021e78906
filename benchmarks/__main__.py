"""``python -m benchmarks [--quick] [--device cpu|cuda] [--out FILE]`` from the repository root: the same run as
``icgd bench`` (see :mod:`icgd.bench`), written to benchmarks/RESULTS.md and benchmarks/results.png."""

from icgd.bench import main

if __name__ == "__main__":
    main()
