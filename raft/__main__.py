from raft.cli import main

main()
