from dtr_lab.cli import main

main()
