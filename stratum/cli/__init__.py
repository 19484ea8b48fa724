"""Interface layer: the typer CLI."""
