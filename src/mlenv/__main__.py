"""``python -m mlenv``: the ``mlenv`` command (what ``torchrun ... -m mlenv train`` runs)."""

from mlenv.cli import main

raise SystemExit(main())
