"""``python -m fissure`` runs the CLI."""

from .cli import main

main()
