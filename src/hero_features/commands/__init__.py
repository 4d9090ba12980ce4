"""The commands behind `hero-features <command>` (cli.py parses the arguments and maps errors
to exit statuses): extract, gather, models, download. `pack` and `inspect` run in their own
modules (pack.run_from_args, inspect.run_from_args)."""
