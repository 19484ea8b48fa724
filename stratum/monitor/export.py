"""``python -m stratum.monitor.export [FOLDER]``: write the Grafana board
(``grafana-dashboard.json``) and Prometheus' rules file (``prometheus-rules.yml``, the
default thresholds) into FOLDER (default: ``docs``), both generated from the code that
defines the metrics and the rules. ``--settings`` takes the thresholds of this
installation's settings (``monitor.*``) instead.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from stratum.config import Settings, load_settings
from stratum.config.monitor import MonitorSettings
from stratum.config.settings import OnlineSettings
from stratum.monitor.dashboard import dashboard
from stratum.monitor.rules import default_rules, rules_yaml

DASHBOARD = "grafana-dashboard.json"
RULES = "prometheus-rules.yml"


def dashboard_json() -> str:
    return json.dumps(dashboard(), indent=2) + "\n"


def rules_text(settings: Settings | None = None) -> str:
    """The rules file with ``settings``' thresholds (None: the defaults)."""
    monitor = settings.monitor if settings else MonitorSettings()
    online = settings.online if settings else OnlineSettings()
    return rules_yaml(default_rules(monitor, online.drift_feature_fraction))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m stratum.monitor.export", description=__doc__)
    ap.add_argument("folder", nargs="?", default="docs", type=Path)
    ap.add_argument("--settings", action="store_true",
                    help="thresholds from this installation's settings, not the defaults")
    args = ap.parse_args(argv)
    args.folder.mkdir(parents=True, exist_ok=True)
    (args.folder / DASHBOARD).write_text(dashboard_json())
    (args.folder / RULES).write_text(rules_text(load_settings() if args.settings else None))
    print(f"wrote {args.folder / DASHBOARD} and {args.folder / RULES}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
