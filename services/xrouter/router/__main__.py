from xrouter.router.server import main

main()
