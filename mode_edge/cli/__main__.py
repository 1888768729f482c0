from mode_edge.cli import main

main()
