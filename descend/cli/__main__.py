"""``python -m descend.cli``: the same as the ``descend`` command."""

from descend.cli import main

main()
