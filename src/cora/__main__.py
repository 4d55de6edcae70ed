"""``python -m cora`` (and ``accelerate launch -m cora train ...`` for several processes)."""

from cora.cli import main

if __name__ == "__main__":
    main()
