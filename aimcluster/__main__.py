"""``python -m aimcluster``: the same as the ``aimcluster`` command."""

from __future__ import annotations

from ._cli.main import main

if __name__ == "__main__":
    main()
