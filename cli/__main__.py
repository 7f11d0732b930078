from mirage3d.cli.main import main

main()
