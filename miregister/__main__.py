"""``python -m miregister``: the same as the ``miregister`` command."""
from .cli import console_main

console_main()
