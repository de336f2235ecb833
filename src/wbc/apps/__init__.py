"""Apps: the `wbc` command (`cli`, one module per subcommand in `commands`), prediction on a user's
images (`predict`), the local web app (`serve`, `webapp`, static files in `web`). The top floor:
may import every other room, and nothing imports it."""
