from xrouter.adapters.server import main

main()
