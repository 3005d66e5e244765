from mailsync.cli import main

main()
