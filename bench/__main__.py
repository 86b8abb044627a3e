from ftlct.bench.cli import main

main()
