from xrouter.reward.server import main

main()
