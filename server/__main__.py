from saltline.server.cli import main

main()
