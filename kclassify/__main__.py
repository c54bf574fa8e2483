from kclassify.cli import main

main()
