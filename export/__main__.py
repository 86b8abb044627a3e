from ftlct.export.cli import main

main()
