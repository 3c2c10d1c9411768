"""Method-comparison reports of sweeps: loading runs, statistics, figures and the report page.

Entry point: ``python scripts/report.py MULTIRUN_DIR`` (see :mod:`polopt.report.cli`).
"""
