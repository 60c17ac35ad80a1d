from rlhf_lab.cli import main

main()
