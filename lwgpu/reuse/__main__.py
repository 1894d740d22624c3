"""``python -m lwgpu.reuse [--quick]``: the reuse-vs-labels tables on the digits market."""
from .evaluation import main

main()
