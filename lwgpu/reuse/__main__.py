"""``python -m lwgpu.reuse [--quick]``: the reuse-vs-labels tables (the command lives in lwgpu.cli.reuse_tables)."""
from lwgpu.cli.reuse_tables import main

main()
