"""python -m qembed_gguf.cli"""

from . import main

main()
