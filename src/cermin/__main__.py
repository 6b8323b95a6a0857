from cermin.cli.main import main

main()
