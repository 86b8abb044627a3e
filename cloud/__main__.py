from ftlct.cloud.cli import main

main()
