from shadowtap.cli import main

main()
