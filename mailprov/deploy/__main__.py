"""``python -m mailprov.deploy ARGS`` runs the ``mailprov`` command line (for venvs without the script)."""

from mailprov.cli import main

main()
