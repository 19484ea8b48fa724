"""``python -m stratum.web [--host H] [--port P]``: the control plane with the dashboard
mounted at ``/ui/``, the process the CLI starts when none runs. Options and behaviour are
those of ``python -m stratum.control``, which serves the admin API alone."""

from __future__ import annotations

import sys

from stratum.control.__main__ import main
from stratum.web.app import mount

if __name__ == "__main__":
    sys.exit(main(extensions=[mount], prog="python -m stratum.web"))
