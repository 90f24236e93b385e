from fmae.cli import main

main()
