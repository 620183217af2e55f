from xrouter.metering.server import main

main()
