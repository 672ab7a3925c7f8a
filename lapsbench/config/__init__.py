"""Reading the user's configuration files (scenario, sweep, profile TOML). Imports nothing heavy: parsing a
scenario must not start numba or polars."""
