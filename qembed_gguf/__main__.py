"""python -m qembed_gguf: the qembed-gguf command."""

from .cli import main

main()
