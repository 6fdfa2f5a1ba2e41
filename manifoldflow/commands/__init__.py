"""The command line, in one direction of imports: commands -> experiments -> core.

- `options`: the parsers and option tables (every experiment's, and `sweep`'s);
- `run`: the life of one run ([`Run`][manifoldflow.commands.run.Run]): its folder,
  `run.json`, its problem, then its checks, summary and files;
- `sweep`: `manifoldflow sweep` (many runs from a TOML file, on Dask);
- `main`: the console script's entry point.
"""
