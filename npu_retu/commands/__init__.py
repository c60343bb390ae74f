"""One module per ``npu-retu`` subcommand.

Each module defines ``HELP`` (one line), ``add_arguments(parser)`` and ``run(args) -> int``.
Modules import heavy packages (torch, transformers) inside ``run`` so that ``--help`` stays fast.
"""
