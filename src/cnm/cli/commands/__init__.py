"""One module per verb family; each exposes ``cmd_<verb>(cli, argv) -> int``."""
