from polopt.train import main

main()
