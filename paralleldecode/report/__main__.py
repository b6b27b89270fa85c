"""``python -m paralleldecode.report``: the ``paralleldecode-report`` command."""

from paralleldecode.report import main

main()
