"""Method-comparison report of a sweep, from its local files (no W&B account needed).

    python scripts/report.py multirun/compare/2025-01-01_12-00-00 [--out DIR] [--eval-episodes 10]

Figures (PNG) and tables in DIR/report.md, the numbers in DIR/summary.json; see --help.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from polopt.report.cli import main

if __name__ == "__main__":
    main()
