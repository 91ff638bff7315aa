from bench.makespan import main

main()
