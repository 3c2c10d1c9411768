from polopt.report.cli import main

main()
